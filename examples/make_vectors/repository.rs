//! The repository vector `format-spec/vectors/repository/`: a small repository tree as
//! a reader finds it on a file system (FORMAT.md 15), with its expected listing and the
//! digests of every point's restored image.
//!
//! Volume `vg0/web` (key `vg0%7Eweb`) is the story of the archive vectors: points 1..4
//! were backed up, then a prune dropped point 2 and merged point 3 onto point 1 (a
//! marker of generation 1), and stopped before deleting the generation-0 marker of
//! point 3. Point 4 names the replaced archive of point 3, so its link holds only
//! through `parent.image`. Volume `data` has one full archive. Objects a reader must
//! ignore sit among them: a temporary marker, a staging file, tombstones, a set-aside
//! marker and a result record.

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use thinarc::format::{Header, ParentRef, SourceInfo, Trailer};

use crate::{BS, Generator, Image, Item, header, parent_of, text};

/// One archive of the tree: its volume key, header, image and bytes.
struct Stored {
    key: &'static str,
    header: Header,
    trailer: Trailer,
    bytes: Vec<u8>,
    image: Image,
}

impl Stored {
    fn object(&self) -> String {
        format!("{:012}-{}.tarc", self.header.seq, self.header.archive_id)
    }

    fn marker(&self) -> Value {
        json!({
            "archive": self.header.archive_id,
            "object": self.object(),
            "size": self.bytes.len(),
            "digest": self.trailer.trailer_sha256.to_hex(),
        })
    }
}

const WEB: &str = "vg0%7Eweb";
const WEB_ID: &str = "7468696e6172632d7765622d766f6c31";
const DATA: &str = "data";
const DATA_ID: &str = "7468696e6172632d646174612d766f31";

impl Generator {
    /// Writes `repository/`. `a`, `b`, `f` and `g` are the images of `full-small`,
    /// `delta-grow`, `delta-shrink` and `delta-regrow`.
    pub(crate) fn repository(&mut self, a: &Image, b: &Image, f: &Image, g: &Image) {
        let named = |key: &'static str, id: &str, seq, parent, size, created: &str| {
            let mut h = header(id, seq, parent, size);
            let (name, vid) = if key == WEB {
                ("vg0/web", WEB_ID)
            } else {
                (DATA, DATA_ID)
            };
            h.volume_name = name.into();
            h.volume_id = vid.into();
            h.created = created.into();
            h.source.path = format!("/dev/{name}");
            h
        };
        let store = |g: &mut Generator, key, h: Header, image: &Image, items: &[Item]| {
            let (bytes, trailer) = g.build(&h, image, items);
            Stored {
                key,
                header: h,
                trailer,
                bytes,
                image: image.clone(),
            }
        };
        let ha = named(
            WEB,
            "ee000000000000000000000000000001",
            1,
            None,
            a.size,
            "2026-11-22T00:00:00Z",
        );
        let sa = store(
            self,
            WEB,
            ha,
            a,
            &[Item::Frame(0, 1), Item::Zeros(1, 1), Item::Frame(2, 3)],
        );
        let hb = named(
            WEB,
            "ee000000000000000000000000000002",
            2,
            Some(parent_of(&sa.header, &sa.trailer)),
            b.size,
            "2026-11-23T00:00:00.250Z",
        );
        let items_b = [
            Item::Frame(2, 1),
            Item::Zeros(3, 1),
            Item::Frame(4, 2),
            Item::Zeros(6, 2),
        ];
        let sb = store(self, WEB, hb, b, &items_b);
        let hf = named(
            WEB,
            "ee000000000000000000000000000003",
            3,
            Some(parent_of(&sb.header, &sb.trailer)),
            f.size,
            "2026-11-24T00:00:00Z",
        );
        let sf = store(self, WEB, hf, f, &[Item::Frame(2, 1)]);
        let image_link = |s: &Stored| ParentRef {
            image: Some(s.trailer.image_digest),
            ..parent_of(&s.header, &s.trailer)
        };
        let mut hm = named(
            WEB,
            "ee000000000000000000000000000013",
            3,
            Some(image_link(&sa)),
            f.size,
            "2026-11-24T00:00:00Z",
        );
        hm.source = SourceInfo {
            kind: "archive".into(),
            path: "/dev/vg0/web".into(),
            method: "merge".into(),
        };
        let sm = store(self, WEB, hm, f, &[Item::Frame(2, 1)]);
        assert_eq!(
            sm.trailer.image_digest, sf.trailer.image_digest,
            "a merge keeps the point"
        );
        let hj = named(
            WEB,
            "ee000000000000000000000000000004",
            4,
            Some(image_link(&sf)),
            g.size,
            "2026-11-25T00:00:00Z",
        );
        let sj = store(self, WEB, hj, g, &[Item::Frame(2, 1)]);
        let mut d = Image::new(2 * u64::from(BS) + 10);
        d.blocks[0] = Some(text("data0", BS as usize));
        d.blocks[2] = Some(text("data2", 10));
        let hd = named(
            DATA,
            "da000000000000000000000000000001",
            1,
            None,
            d.size,
            "2026-11-22T12:00:00.5Z",
        );
        let sd = store(
            self,
            DATA,
            hd,
            &d,
            &[Item::Frame(0, 1), Item::Zeros(1, 1), Item::Frame(2, 1)],
        );

        let root = "repository/tree";
        let config = json!({
            "kind": "thinarc-repository",
            "version": 1,
            "id": "7468696e617263207265706f2d766563",
            "created": "2026-11-22T00:00:00Z",
        });
        self.write_json(&format!("{root}/config"), &config);
        for s in [&sa, &sb, &sf, &sm, &sj, &sd] {
            self.write(
                &format!("{root}/volumes/{}/archives/{}", s.key, s.object()),
                &s.bytes,
            );
        }
        // Committed points: the highest generation of each seq wins.
        let commits = [
            (&sa, "000000000001"),
            (&sf, "000000000003"),
            (&sm, "000000000003.000001"),
            (&sj, "000000000004"),
            (&sd, "000000000001"),
        ];
        for (s, name) in commits {
            self.write_json(
                &format!("{root}/volumes/{}/commits/{name}", s.key),
                &s.marker(),
            );
        }
        let web = format!("{root}/volumes/{WEB}");
        // What a reader must ignore.
        let staging = "000000000005-ee000000000000000000000000000005.tarc";
        let temp_marker = json!({
            "archive": "ee000000000000000000000000000005",
            "object": staging,
            "size": 500,
            "digest": "00".repeat(32),
        });
        self.write_json(&format!("{web}/commits/000000000005#1"), &temp_marker);
        self.write(&format!("{web}/archives/{staging}#1"), &sj.bytes[..500]);
        for (s, reason) in [(&sb, "dropped"), (&sf, "merged")] {
            let t = json!({"object": s.object(), "reason": reason});
            self.write_json(&format!("{web}/tombstones/{}", s.object()), &t);
        }
        self.write(
            &format!("{web}/damaged/000000000002"),
            b"{\"archive\": \"ee00000000000000",
        );
        let record = json!({
            "operation": "backup", "volume": "vg0/web", "repository": "/srv/backup",
            "host": "vectors", "pid": 1, "started": "2026-11-25T00:00:00Z",
            "finished": "2026-11-25T00:00:01Z", "result": "success",
            "archive": sj.header.archive_id, "seq": 4, "bytes_read": g.size, "bytes_written": sj.bytes.len(),
        });
        self.write_json(&format!("{web}/records/backup.success.json"), &record);

        let point = |s: &Stored, parent: Option<&Stored>| {
            let blocks: Vec<Vec<u8>> = (0..s.image.blocks.len() as u64)
                .map(|i| s.image.block(i))
                .collect();
            json!({
                "seq": s.header.seq,
                "archive": s.header.archive_id,
                "object": s.object(),
                "parent": s.header.parent.as_ref().map(|p| p.id.clone()),
                "parent_archive": parent.map(|p| p.header.archive_id.clone()),
                "parent_seq": s.header.parent.as_ref().map(|p| p.seq),
                "created": s.header.created,
                "size": s.header.size,
                "block_size": s.header.block_size,
                "image_digest": s.trailer.image_digest.to_hex(),
                "archive_digest": s.trailer.trailer_sha256.to_hex(),
                "image_sha256": hex::encode(Sha256::digest(blocks.concat())),
                "block_sha256": blocks.iter().map(|b| hex::encode(Sha256::digest(b))).collect::<Vec<_>>(),
            })
        };
        let ignored = [
            (
                "volumes/vg0%7Eweb/commits/000000000005#1",
                "temporary name of a marker being created on a local file system (not a marker key: ignored)",
            ),
            (
                &*format!("volumes/vg0%7Eweb/archives/{staging}#1"),
                "staging file of an archive upload on a local file system (ignored)",
            ),
            (
                &*format!("volumes/vg0%7Eweb/archives/{}", sb.object()),
                "archive of dropped point 2: no marker names it (tombstoned)",
            ),
            (
                &*format!("volumes/vg0%7Eweb/archives/{}", sf.object()),
                "replaced archive of point 3: only its generation-0 marker names it",
            ),
            (
                "volumes/vg0%7Eweb/commits/000000000003",
                "generation 0 of seq 3, superseded by generation 1",
            ),
            (
                "volumes/vg0%7Eweb/damaged/000000000002",
                "corrupt marker set aside by repair (only its seq counts)",
            ),
            ("volumes/vg0%7Eweb/tombstones/", "tombstones (cleanup only)"),
            (
                "volumes/vg0%7Eweb/records/backup.success.json",
                "result record (status only)",
            ),
        ];
        let expected = json!({
            "description": "a repository tree (tree/) as a reader finds it on a local file system; \
                in an object store the keys are the same strings. Listing: per volume (name and key \
                segment), the committed points in seq order; `parent` is the header's parent.id, \
                `parent_archive` the archive committed at `parent_seq` (for seq 4 the merged \
                archive, while parent.id names the replaced one: the link holds through \
                parent.image). `image_sha256` and `block_sha256` are the restored image and each \
                of its blocks (the last one at its real length).",
            "config": config,
            "volumes": [
                {"name": "data", "key": DATA, "points": [point(&sd, None)]},
                {"name": "vg0/web", "key": WEB, "points": [
                    point(&sa, None), point(&sm, Some(&sa)), point(&sj, Some(&sm)),
                ]},
            ],
            "ignored": ignored.iter().map(|(o, why)| json!({"object": o, "why": why})).collect::<Vec<_>>(),
        });
        self.write_json("repository/expected.json", &expected);
    }
}
