//! The thin-provisioning-tools wrappers on REAL tool output: metadata files are built
//! with `thin_restore` from XML (no kernel support needed) and read with the real
//! `thin_delta` and `thin_dump`, including through a metadata snapshot (`-m`).
//!
//! thin-provisioning-tools is installed with apt-get if missing (CI runs as root);
//! if that is impossible the tests fail, they are never skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

use thinarc::lvm::{DeltaKind, DeltaRange, LvmError, thin_delta, thin_dump_mapped};

const POOL_XML: &str = include_str!("../data/lvm/pool.xml");

/// Makes sure `thin_restore` & co. are installed.
fn thin_tools() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        crate::util::ensure_tool(
            "thin_restore",
            &["-V"],
            "thin-provisioning-tools",
            "these tests need the real thin_restore/thin_delta/thin_dump",
        );
    });
}

/// Restores `xml` into a fresh 8 MiB metadata file; with `snap`, fakes a metadata
/// snapshot at block 2000 (as a reserved one looks to `-m`).
fn metadata(dir: &Path, xml: &str, snap: bool) -> PathBuf {
    thin_tools();
    let x = dir.join("pool.xml");
    std::fs::write(&x, xml).unwrap();
    let meta = dir.join("meta.bin");
    std::fs::File::create(&meta)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let o = Command::new("thin_restore")
        .arg("-i")
        .arg(&x)
        .arg("-o")
        .arg(&meta)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "thin_restore: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    if snap {
        let o = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/lvm/mksnap.py"
            ))
            .arg(&meta)
            .arg("2000")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "mksnap: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    meta
}

#[test]
fn thin_delta_through_a_metadata_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let meta = metadata(dir.path(), POOL_XML, true);
    let d = thin_delta(meta.to_str().unwrap(), 1, 2).unwrap();
    assert_eq!(d.chunk_bytes, 64 << 10);
    use DeltaKind::*;
    assert_eq!(
        d.ranges,
        vec![
            DeltaRange {
                kind: Different,
                blocks: 10..15
            },
            DeltaRange {
                kind: RightOnly,
                blocks: 30..31
            },
            DeltaRange {
                kind: RightOnly,
                blocks: 40..42
            },
            DeltaRange {
                kind: LeftOnly,
                blocks: 50..52
            },
        ]
    );
    // The real tool's plain output (no -m) on metadata without a snapshot parses to
    // the same, and is the recorded fixture the unit tests use.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = metadata(plain_dir.path(), POOL_XML, false);
    let o = Command::new("thin_delta")
        .args(["--snap1", "1", "--snap2", "2"])
        .arg(&plain)
        .output()
        .unwrap();
    let text = String::from_utf8(o.stdout).unwrap();
    assert_eq!(thinarc::lvm::parse_thin_delta(&text).unwrap(), d);
    assert_eq!(text, include_str!("../data/lvm/delta-0.9.0.xml"));
}

#[test]
fn thin_dump_mapped_ranges_through_a_metadata_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let meta = metadata(dir.path(), POOL_XML, true);
    let m = thin_dump_mapped(meta.to_str().unwrap(), 2).unwrap();
    // Device 2: 0..10, 10..15, 15..20 adjacent (merged), 30, 40..42.
    assert_eq!(m.ranges, vec![0..20, 30..31, 40..42]);
    let k = 64 << 10;
    assert_eq!(
        m.unmapped_bytes(60 * k),
        vec![20 * k..30 * k, 31 * k..40 * k, 42 * k..60 * k]
    );
    let m1 = thin_dump_mapped(meta.to_str().unwrap(), 1).unwrap();
    assert_eq!(m1.ranges, vec![0..20, 50..52]);
}

#[test]
fn without_a_metadata_snapshot_the_tools_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let meta = metadata(dir.path(), POOL_XML, false);
    let m = meta.to_str().unwrap();
    let e = thin_delta(m, 1, 2).unwrap_err();
    assert!(matches!(e, LvmError::Command { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "`thin_delta -m --snap1 1 --snap2 2 {m}` failed (exit status: 1): no current metadata snap"
        )
    );
    let e = thin_dump_mapped(m, 2).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("`thin_dump -m --dev-id 2 {m}` failed (exit status: 1): no current metadata snap")
    );
    let meta = metadata(dir.path(), POOL_XML, true);
    let e = thin_delta(meta.to_str().unwrap(), 1, 9).unwrap_err();
    assert!(
        e.to_string()
            .ends_with(": Unable to find mapping tree for snap2 (9)"),
        "{e}"
    );
}

/// Many mappings of several shapes: the parsers agree with the mapping the XML was
/// generated from, block for block.
#[test]
fn large_metadata_matches_the_generated_mapping() {
    let mut rng = crate::util::Rng::new(4);
    let blocks = 20_000u64;
    // Device 1 maps a random 60 %; device 2 starts from it, remaps 5 %, unmaps 3 %
    // and maps 4 % new.
    let mut d1 = vec![None; blocks as usize];
    let mut next = 0u64;
    for b in d1.iter_mut() {
        if rng.below(100) < 60 {
            *b = Some(next);
            next += 1;
        }
    }
    let mut d2 = d1.clone();
    for b in d2.iter_mut() {
        let r = rng.below(100);
        match (*b, r) {
            (Some(_), 0..5) => {
                *b = Some(next);
                next += 1;
            }
            (Some(_), 5..8) => *b = None,
            (None, 0..4) => {
                *b = Some(next);
                next += 1;
            }
            _ => {}
        }
    }
    let dev = |id: u32, map: &[Option<u64>]| {
        let mut s = format!(
            "  <device dev_id=\"{id}\" mapped_blocks=\"{}\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n",
            map.iter().flatten().count()
        );
        for (o, d) in map.iter().enumerate() {
            if let Some(d) = d {
                s += &format!(
                    "    <single_mapping origin_block=\"{o}\" data_block=\"{d}\" time=\"0\"/>\n"
                );
            }
        }
        s + "  </device>\n"
    };
    let xml = format!(
        "<superblock uuid=\"\" time=\"1\" transaction=\"2\" flags=\"0\" version=\"2\" data_block_size=\"256\" nr_data_blocks=\"{}\">\n{}{}</superblock>\n",
        next + 10,
        dev(1, &d1),
        dev(2, &d2)
    );
    let dir = tempfile::tempdir().unwrap();
    let meta = metadata(dir.path(), &xml, true);
    let m = meta.to_str().unwrap();
    // Expected per block, from the generator.
    let kind = |b: usize| match (d1[b], d2[b]) {
        (Some(x), Some(y)) if x == y => None,
        (Some(_), Some(_)) => Some(DeltaKind::Different),
        (None, Some(_)) => Some(DeltaKind::RightOnly),
        (Some(_), None) => Some(DeltaKind::LeftOnly),
        (None, None) => None,
    };
    let d = thin_delta(m, 1, 2).unwrap();
    assert_eq!(d.chunk_bytes, 128 << 10);
    let mut got = vec![None; blocks as usize];
    for r in &d.ranges {
        for b in r.blocks.clone() {
            assert!(got[b as usize].is_none(), "block {b} reported twice");
            got[b as usize] = Some(r.kind);
        }
    }
    for (b, got) in got.iter().enumerate() {
        assert_eq!(*got, kind(b), "block {b}");
    }
    let mapped = thin_dump_mapped(m, 2).unwrap();
    let mut is_mapped = vec![false; blocks as usize];
    for r in &mapped.ranges {
        for b in r.clone() {
            is_mapped[b as usize] = true;
        }
    }
    for (b, (m, d)) in is_mapped.iter().zip(&d2).enumerate() {
        assert_eq!(*m, d.is_some(), "block {b}");
    }
    assert!(
        mapped.ranges.windows(2).all(|w| w[0].end < w[1].start),
        "runs are merged"
    );
}
