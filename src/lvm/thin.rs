//! `thin_delta` and `thin_dump`: running them on a pool's metadata snapshot, and
//! parsing their XML output.
//!
//! Both tools print one XML element per line. The parsers read elements, not lines
//! (1.x prints no final newline), accept the output of thin-provisioning-tools 0.9 and
//! 1.x, and reject anything they do not understand rather than guess. Units are data
//! blocks (pool chunks); `data_block_size` is in 512-byte sectors.

use std::io::BufRead;
use std::ops::Range;

use super::LvmError;
use super::cmd::{failed, log_ran, run_tool, spawn};

/// One XML element of the tools' output: `<name a="1" b="2"/>`, `<name ...>` or
/// `</name>`.
#[derive(Debug, PartialEq, Eq)]
struct Element<'a> {
    name: &'a str,
    closing: bool,
    attrs: Vec<(&'a str, &'a str)>,
}

impl<'a> Element<'a> {
    fn attr(&self, key: &str) -> Option<&'a str> {
        self.attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn num(&self, key: &str, what: &str) -> Result<u64, LvmError> {
        let v = self
            .attr(key)
            .ok_or_else(|| LvmError::parse(what, format!("<{}> without {key}", self.name)))?;
        v.parse().map_err(|_| {
            LvmError::parse(what, format!("<{}> {key}={v:?} is not a number", self.name))
        })
    }
}

/// Splits `text` into its elements.
fn elements<'a>(text: &'a str, what: &str) -> Result<Vec<Element<'a>>, LvmError> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        if !rest[..start].trim().is_empty() {
            return Err(LvmError::parse(
                what,
                format!("unexpected text {:?}", rest[..start].trim()),
            ));
        }
        let end = rest[start..]
            .find('>')
            .ok_or_else(|| LvmError::parse(what, "unterminated element"))?
            + start;
        out.push(element(&rest[start + 1..end], what)?);
        rest = &rest[end + 1..];
    }
    if !rest.trim().is_empty() {
        return Err(LvmError::parse(
            what,
            format!("unexpected text {:?}", rest.trim()),
        ));
    }
    Ok(out)
}

/// Parses the inside of `<...>`.
fn element<'a>(inner: &'a str, what: &str) -> Result<Element<'a>, LvmError> {
    let bad = || LvmError::parse(what, format!("malformed element <{inner}>"));
    let closing = inner.starts_with('/');
    let body = inner.trim_start_matches('/').trim_end_matches('/');
    let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
    let name = &body[..name_end];
    if name.is_empty() {
        return Err(bad());
    }
    let mut attrs = Vec::new();
    let mut rest = body[name_end..].trim_start();
    while !rest.is_empty() {
        let eq = rest.find("=\"").ok_or_else(bad)?;
        let key = rest[..eq].trim();
        let after = &rest[eq + 2..];
        let close = after.find('"').ok_or_else(bad)?;
        attrs.push((key, &after[..close]));
        rest = after[close + 1..].trim_start();
    }
    Ok(Element {
        name,
        closing,
        attrs,
    })
}

/// What a `thin_delta` range says about the blocks it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaKind {
    /// Mapped to the same data block in both devices.
    Same,
    /// Mapped in both, to different data blocks: changed.
    Different,
    /// Mapped only in the second device: newly written.
    RightOnly,
    /// Mapped only in the first device: discarded since, reads as zero now.
    LeftOnly,
}

/// A run of data blocks of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaRange {
    /// The kind.
    pub kind: DeltaKind,
    /// The blocks (pool chunks), in units of `data_block_size`.
    pub blocks: Range<u64>,
}

/// The parsed output of `thin_delta` (without `--verbose`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinDelta {
    /// Pool chunk size in bytes.
    pub chunk_bytes: u64,
    /// The ranges other than `same`, in order.
    pub ranges: Vec<DeltaRange>,
}

impl ThinDelta {
    /// Byte ranges to read or record: `different`, `right_only` and `left_only`.
    pub fn changed_bytes(&self) -> Vec<Range<u64>> {
        self.bytes(|k| k != DeltaKind::Same)
    }

    /// Byte ranges unmapped in the second device (`left_only`): they read as zero.
    pub fn unmapped_bytes(&self) -> Vec<Range<u64>> {
        self.bytes(|k| k == DeltaKind::LeftOnly)
    }

    fn bytes(&self, keep: impl Fn(DeltaKind) -> bool) -> Vec<Range<u64>> {
        self.ranges
            .iter()
            .filter(|r| keep(r.kind))
            .map(|r| r.blocks.start * self.chunk_bytes..r.blocks.end * self.chunk_bytes)
            .collect()
    }
}

/// Chunk size in bytes from a `<superblock>` element.
fn chunk_bytes(e: &Element, what: &str) -> Result<u64, LvmError> {
    let sectors = e.num("data_block_size", what)?;
    if sectors == 0 {
        return Err(LvmError::parse(what, "data_block_size is 0"));
    }
    Ok(sectors * 512)
}

/// Parses the output of `thin_delta` (0.9 or 1.x, not `--verbose`).
///
/// # Errors
/// [`LvmError::Parse`] for anything but a superblock holding one diff of ranges.
pub fn parse_thin_delta(text: &str) -> Result<ThinDelta, LvmError> {
    const WHAT: &str = "thin_delta";
    let els = elements(text, WHAT)?;
    let mut it = els.iter();
    let sb = it
        .next()
        .filter(|e| e.name == "superblock" && !e.closing)
        .ok_or_else(|| LvmError::parse(WHAT, "output does not start with <superblock>"))?;
    let mut delta = ThinDelta {
        chunk_bytes: chunk_bytes(sb, WHAT)?,
        ranges: Vec::new(),
    };
    let mut state = 0; // 0: before <diff>, 1: inside, 2: after </diff>, 3: after </superblock>
    for e in it {
        state = match (state, e.name, e.closing) {
            (0, "diff", false) => 1,
            (1, "diff", true) => 2,
            (2, "superblock", true) => 3,
            (1, kind, false) => {
                let kind = match kind {
                    "same" => DeltaKind::Same,
                    "different" => DeltaKind::Different,
                    "right_only" => DeltaKind::RightOnly,
                    "left_only" => DeltaKind::LeftOnly,
                    other => {
                        return Err(LvmError::parse(
                            WHAT,
                            format!("unknown range kind <{other}> (was --verbose given?)"),
                        ));
                    }
                };
                let begin = e.num("begin", WHAT)?;
                let length = e.num("length", WHAT)?;
                let end = begin
                    .checked_add(length)
                    .ok_or_else(|| LvmError::parse(WHAT, "range overflows"))?;
                if kind != DeltaKind::Same {
                    delta.ranges.push(DeltaRange {
                        kind,
                        blocks: begin..end,
                    });
                }
                1
            }
            _ => {
                return Err(LvmError::parse(
                    WHAT,
                    format!(
                        "unexpected <{}{}>",
                        if e.closing { "/" } else { "" },
                        e.name
                    ),
                ));
            }
        };
    }
    if state != 3 {
        return Err(LvmError::parse(WHAT, "output ends before </superblock>"));
    }
    Ok(delta)
}

/// The mapped (provisioned) blocks of one thin device, from `thin_dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// Pool chunk size in bytes.
    pub chunk_bytes: u64,
    /// Mapped chunks, sorted, adjacent runs merged.
    pub ranges: Vec<Range<u64>>,
}

impl Mapped {
    /// Byte ranges of `0..size` that are not mapped: they read as zero.
    pub fn unmapped_bytes(&self, size: u64) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut at = 0;
        for r in &self.ranges {
            let (s, e) = (r.start * self.chunk_bytes, r.end * self.chunk_bytes);
            if s > at {
                out.push(at..s.min(size));
            }
            at = at.max(e);
            if at >= size {
                break;
            }
        }
        if at < size {
            out.push(at..size);
        }
        out.retain(|r| !r.is_empty());
        out
    }
}

/// Parses `thin_dump` XML for device `dev_id`, streaming: memory is the merged list
/// of mapped runs, not the output.
///
/// # Errors
/// [`LvmError::Parse`] if the output is malformed or does not hold device `dev_id`.
pub fn parse_thin_dump(reader: impl BufRead, dev_id: u64) -> Result<Mapped, LvmError> {
    const WHAT: &str = "thin_dump";
    let mut chunk = None;
    let mut ranges: Vec<Range<u64>> = Vec::new();
    let mut in_dev: Option<bool> = None; // Some(true) inside the wanted device
    let mut found = false;
    let mut ended = false;
    let mut push = |r: Range<u64>| -> Result<(), LvmError> {
        match ranges.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            Some(last) if last.end > r.start => {
                return Err(LvmError::parse(
                    WHAT,
                    format!("mapping at block {} is out of order", r.start),
                ));
            }
            _ => ranges.push(r),
        }
        Ok(())
    };
    for line in reader.lines() {
        let line = line.map_err(|e| LvmError::parse(WHAT, format!("reading output: {e}")))?;
        for e in elements(&line, WHAT)? {
            match (e.name, e.closing, in_dev) {
                ("superblock", false, None) if chunk.is_none() => {
                    chunk = Some(chunk_bytes(&e, WHAT)?)
                }
                ("superblock", true, None) => ended = true,
                ("device", false, None) => {
                    let this = e.num("dev_id", WHAT)? == dev_id;
                    found |= this;
                    in_dev = Some(this);
                }
                ("device", true, Some(_)) => in_dev = None,
                ("range_mapping", false, Some(this)) => {
                    if this {
                        let b = e.num("origin_begin", WHAT)?;
                        let len = e.num("length", WHAT)?;
                        push(b..b + len)?;
                    }
                }
                ("single_mapping", false, Some(this)) => {
                    if this {
                        let b = e.num("origin_block", WHAT)?;
                        push(b..b + 1)?;
                    }
                }
                (name, closing, _) => {
                    return Err(LvmError::parse(
                        WHAT,
                        format!("unexpected <{}{name}>", if closing { "/" } else { "" }),
                    ));
                }
            }
        }
    }
    let chunk_bytes = chunk.ok_or_else(|| LvmError::parse(WHAT, "no <superblock>"))?;
    if !ended {
        return Err(LvmError::parse(WHAT, "output ends before </superblock>"));
    }
    if !found {
        return Err(LvmError::parse(
            WHAT,
            format!("no device {dev_id} in the metadata"),
        ));
    }
    Ok(Mapped {
        chunk_bytes,
        ranges,
    })
}

/// Runs `thin_delta -m --snap1 OLD --snap2 NEW META` on the pool metadata device (or a
/// metadata file) holding a metadata snapshot.
///
/// `-m` is given without a block number and followed by another option: 0.9 takes an
/// optional block number only attached (`-m2000`), so this form means "the current
/// metadata snapshot" in both 0.9 and 1.x.
///
/// # Errors
/// [`LvmError`]: the tool failed (for example "no current metadata snap") or its
/// output is not understood.
pub fn thin_delta(meta: &str, old: u64, new: u64) -> Result<ThinDelta, LvmError> {
    let (old, new) = (old.to_string(), new.to_string());
    parse_thin_delta(&run_tool(
        "thin_delta",
        &["-m", "--snap1", &old, "--snap2", &new, meta],
    )?)
}

/// Runs `thin_dump -m --dev-id ID META` and returns the device's mapped blocks,
/// parsing the output as it streams.
///
/// # Errors
/// [`LvmError`].
pub fn thin_dump_mapped(meta: &str, dev_id: u64) -> Result<Mapped, LvmError> {
    let id = dev_id.to_string();
    let args = ["-m", "--dev-id", &id, meta];
    // A signal's forced exit waits for the command (see `crate::cleanup`).
    let _section = crate::cleanup::guard();
    let started = std::time::Instant::now();
    let mut child = spawn("thin_dump", &args)?;
    let stdout = child.stdout.take().expect("stdout is piped");
    // stderr is read on a thread so a chatty tool cannot block on a full pipe.
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut buf);
        buf
    });
    let parsed = parse_thin_dump(std::io::BufReader::new(stdout), dev_id);
    let status = child.wait().map_err(|source| LvmError::Spawn {
        program: "thin_dump".into(),
        package: "thin-provisioning-tools",
        source,
    })?;
    let err = err_reader.join().unwrap_or_default();
    log_ran("thin_dump", &args, started);
    if !status.success() {
        return Err(failed("thin_dump", &args, status, &err));
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output of thin_delta 0.9.0 on `pool.xml` of the recipes (as the tests in
    /// `tests/it/lvm.rs` produce it with the real tool).
    const DELTA_09: &str = include_str!("../../tests/data/lvm/delta-0.9.0.xml");
    /// The same from thin_delta 1.1.0 (recorded: no final newline).
    const DELTA_11: &str = include_str!("../../tests/data/lvm/delta-1.1.0.xml");

    fn expected() -> ThinDelta {
        use DeltaKind::*;
        ThinDelta {
            chunk_bytes: 64 << 10,
            ranges: vec![
                DeltaRange {
                    kind: Different,
                    blocks: 10..15,
                },
                DeltaRange {
                    kind: RightOnly,
                    blocks: 30..31,
                },
                DeltaRange {
                    kind: RightOnly,
                    blocks: 40..42,
                },
                DeltaRange {
                    kind: LeftOnly,
                    blocks: 50..52,
                },
            ],
        }
    }

    #[test]
    fn parses_thin_delta_of_both_versions() {
        assert_eq!(parse_thin_delta(DELTA_09).unwrap(), expected());
        assert_eq!(parse_thin_delta(DELTA_11).unwrap(), expected());
        assert!(!DELTA_11.ends_with('\n'));
        let d = expected();
        let k = 64 << 10;
        assert_eq!(
            d.changed_bytes(),
            vec![
                10 * k..15 * k,
                30 * k..31 * k,
                40 * k..42 * k,
                50 * k..52 * k
            ]
        );
        assert_eq!(d.unmapped_bytes(), vec![50 * k..52 * k]);
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        let cut = &DELTA_09[..DELTA_09.find("</diff>").unwrap()];
        assert_eq!(
            parse_thin_delta(cut).unwrap_err().to_string(),
            "cannot parse the output of thin_delta: output ends before </superblock>"
        );
        let verbose = DELTA_09.replace(
            "<same begin=\"0\" length=\"10\"/>",
            "<same>\n<range begin=\"0\" data_begin=\"0\" length=\"10\"/>\n</same>",
        );
        assert_eq!(
            parse_thin_delta(&verbose).unwrap_err().to_string(),
            "cannot parse the output of thin_delta: <same> without begin"
        );
        assert_eq!(
            parse_thin_delta("no current metadata snap")
                .unwrap_err()
                .to_string(),
            "cannot parse the output of thin_delta: unexpected text \"no current metadata snap\""
        );
        let bad = DELTA_09.replace("length=\"5\"", "length=\"five\"");
        assert_eq!(
            parse_thin_delta(&bad).unwrap_err().to_string(),
            "cannot parse the output of thin_delta: <different> length=\"five\" is not a number"
        );
    }

    #[test]
    fn unmapped_is_the_complement_clipped_to_the_size() {
        let m = Mapped {
            chunk_bytes: 10,
            ranges: vec![0..2, 5..6, 9..20],
        };
        assert_eq!(m.unmapped_bytes(100), vec![20..50, 60..90]);
        assert_eq!(m.unmapped_bytes(15), vec![]);
        let none = Mapped {
            chunk_bytes: 10,
            ranges: vec![],
        };
        assert_eq!(none.unmapped_bytes(33), vec![0..33]);
    }

    #[test]
    fn thin_dump_other_devices_are_skipped_and_runs_merged() {
        let xml = "<superblock uuid=\"\" time=\"0\" transaction=\"1\" data_block_size=\"256\" nr_data_blocks=\"9\">\n  <device dev_id=\"1\" mapped_blocks=\"1\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n    <single_mapping origin_block=\"7\" data_block=\"0\" time=\"0\"/>\n  </device>\n  <device dev_id=\"2\" mapped_blocks=\"4\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n    <range_mapping origin_begin=\"0\" data_begin=\"1\" length=\"2\" time=\"0\"/>\n    <single_mapping origin_block=\"2\" data_block=\"9\" time=\"0\"/>\n    <single_mapping origin_block=\"5\" data_block=\"3\" time=\"0\"/>\n  </device>\n</superblock>";
        let m = parse_thin_dump(xml.as_bytes(), 2).unwrap();
        assert_eq!(
            m,
            Mapped {
                chunk_bytes: 128 << 10,
                ranges: vec![0..3, 5..6]
            }
        );
        assert_eq!(
            parse_thin_dump(xml.as_bytes(), 3).unwrap_err().to_string(),
            "cannot parse the output of thin_dump: no device 3 in the metadata"
        );
        let cut = &xml[..xml.len() - 13];
        assert!(parse_thin_dump(cut.as_bytes(), 2).is_err());
    }
}
