//! Frames: runs of consecutive data blocks, stored zstd-compressed or raw.

use super::{FormatError, MAX_FRAME_CONTENT};

/// How a frame's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// One zstd frame holding the concatenated blocks.
    Zstd,
    /// The concatenated blocks, uncompressed (used when zstd does not shrink them).
    Raw,
}

/// Compresses `content` (the concatenated blocks of one frame) at zstd `level`,
/// keeping the raw bytes when compression would not make them smaller.
///
/// # Errors
/// [`FormatError::InvalidInput`] if the content exceeds [`MAX_FRAME_CONTENT`].
pub fn compress_frame(
    content: &[u8],
    compressor: &mut zstd::bulk::Compressor<'_>,
) -> Result<(FrameKind, Vec<u8>), FormatError> {
    if content.len() as u64 > MAX_FRAME_CONTENT {
        return Err(FormatError::InvalidInput(format!(
            "frame content of {} bytes exceeds {MAX_FRAME_CONTENT}",
            content.len()
        )));
    }
    let z = compressor
        .compress(content)
        .map_err(|e| FormatError::InvalidInput(format!("zstd compression failed: {e}")))?;
    if z.len() < content.len() {
        Ok((FrameKind::Zstd, z))
    } else {
        Ok((FrameKind::Raw, content.to_vec()))
    }
}

/// Decodes a stored frame whose content must be exactly `content_len` bytes.
///
/// # Errors
/// [`FormatError::Corrupt`] if zstd fails or the content length differs.
pub fn decompress_frame(
    kind: FrameKind,
    stored: &[u8],
    content_len: usize,
) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::new();
    FrameDecoder::new()?.decode_into(kind, stored, content_len, &mut out)?;
    Ok(out)
}

/// Decodes frames with one reusable zstd context: creating a context costs about as
/// much as decoding a small frame, so readers that decode many keep one per thread.
pub struct FrameDecoder {
    dctx: zstd::bulk::Decompressor<'static>,
}

impl FrameDecoder {
    /// A decoder with a fresh zstd context.
    ///
    /// # Errors
    /// [`FormatError::Corrupt`] if zstd cannot allocate a context.
    pub fn new() -> Result<Self, FormatError> {
        let dctx = zstd::bulk::Decompressor::new()
            .map_err(|e| FormatError::corrupt("frame", format!("zstd context: {e}")))?;
        Ok(FrameDecoder { dctx })
    }

    /// Decodes a stored frame whose content must be exactly `content_len` bytes into
    /// `out`, replacing its contents and reusing its allocation.
    ///
    /// # Errors
    /// [`FormatError::Corrupt`] if zstd fails or the content length differs.
    pub fn decode_into(
        &mut self,
        kind: FrameKind,
        stored: &[u8],
        content_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), FormatError> {
        if content_len as u64 > MAX_FRAME_CONTENT {
            return Err(FormatError::corrupt(
                "frame",
                format!("content length {content_len} too large"),
            ));
        }
        out.clear();
        match kind {
            FrameKind::Raw => out.extend_from_slice(stored),
            // zstd writes at most the capacity reserved here, and a frame whose content
            // exceeds it is an error: a hostile frame cannot balloon memory.
            FrameKind::Zstd => {
                check_zstd_frame(stored)?;
                out.reserve_exact(content_len);
                self.dctx
                    .decompress_to_buffer(stored, out)
                    .map_err(|e| FormatError::corrupt("frame", format!("zstd: {e}")))?;
            }
        }
        if out.len() != content_len {
            return Err(FormatError::corrupt(
                "frame",
                format!("content is {} bytes, index says {content_len}", out.len()),
            ));
        }
        Ok(())
    }
}

/// Content length of a stored frame: its length for a raw frame, the
/// `Frame_Content_Size` field of the zstd frame header otherwise (writers always set
/// it). Lets a reader decode a frame when it knows only some of the frame's blocks.
///
/// # Errors
/// [`FormatError::Corrupt`] if the stored bytes are not one zstd frame as
/// [`check_zstd_frame`] requires, or give a content size above [`MAX_FRAME_CONTENT`].
pub fn frame_content_len(kind: FrameKind, stored: &[u8]) -> Result<usize, FormatError> {
    let len = match kind {
        FrameKind::Raw => stored.len() as u64,
        FrameKind::Zstd => check_zstd_frame(stored)?,
    };
    if len > MAX_FRAME_CONTENT {
        return Err(FormatError::corrupt(
            "frame",
            format!("content size {len} exceeds {MAX_FRAME_CONTENT}"),
        ));
    }
    Ok(len as usize)
}

/// The zstd frame magic number (RFC 8878 3.1.1) as stored, little-endian.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The largest window a stored zstd frame may declare (FORMAT.md 6.1): the largest
/// frame content, so that a streaming decoder needs no more memory than a frame.
pub const MAX_ZSTD_WINDOW: u64 = MAX_FRAME_CONTENT;

/// What the header of a zstd frame declares (RFC 8878 3.1.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZstdFrameHeader {
    /// Length of the frame header: magic, descriptor, window, dictionary id, content size.
    pub header_len: usize,
    /// `Single_Segment_flag`: no window descriptor, the window is the content size.
    pub single_segment: bool,
    /// `Window_Size`, the history a decoder must keep.
    pub window_size: u64,
    /// `Frame_Content_Size`, when present.
    pub content_size: Option<u64>,
}

/// Decodes the header of the zstd frame at the start of `stored`.
///
/// # Errors
/// [`FormatError::Corrupt`] when `stored` does not start with a zstd frame (a skippable
/// frame included), the header is cut short, sets its reserved bit, or names a
/// dictionary (FORMAT.md 6.1).
pub fn zstd_frame_header(stored: &[u8]) -> Result<ZstdFrameHeader, FormatError> {
    let bad = |d: &str| FormatError::corrupt("frame", format!("zstd frame header: {d}"));
    if stored.len() < 5 || stored[..4] != ZSTD_MAGIC {
        return Err(bad("not a zstd frame (wrong magic number)"));
    }
    let descriptor = stored[4];
    if descriptor & 0x08 != 0 {
        return Err(bad("reserved bit set"));
    }
    if descriptor & 0x03 != 0 {
        return Err(bad("names a dictionary"));
    }
    let single_segment = descriptor & 0x20 != 0;
    let mut at = 5;
    let mut window_size = 0;
    if !single_segment {
        let w = *stored.get(at).ok_or_else(|| bad("cut short"))?;
        let base = 1u64 << (10 + (w >> 3));
        window_size = base + base / 8 * u64::from(w & 7);
        at += 1;
    }
    let fcs_len = match (descriptor >> 6, single_segment) {
        (0, false) => 0,
        (0, true) => 1,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    let field = stored
        .get(at..at + fcs_len)
        .ok_or_else(|| bad("cut short"))?;
    let mut le = [0u8; 8];
    le[..fcs_len].copy_from_slice(field);
    let content_size = match fcs_len {
        0 => None,
        2 => Some(u64::from_le_bytes(le) + 256),
        _ => Some(u64::from_le_bytes(le)),
    };
    if single_segment {
        window_size = content_size.unwrap_or(0);
    }
    Ok(ZstdFrameHeader {
        header_len: at + fcs_len,
        single_segment,
        window_size,
        content_size,
    })
}

/// Checks that `stored` is exactly one zstd frame as FORMAT.md 6.1 requires (its
/// content size present, its window at most [`MAX_ZSTD_WINDOW`], nothing after it) and
/// returns its declared content size.
///
/// # Errors
/// [`FormatError::Corrupt`] naming the rule broken.
pub fn check_zstd_frame(stored: &[u8]) -> Result<u64, FormatError> {
    let h = zstd_frame_header(stored)?;
    let Some(content_size) = h.content_size else {
        return Err(FormatError::corrupt(
            "frame",
            "zstd frame header lacks the content size",
        ));
    };
    if h.window_size > MAX_ZSTD_WINDOW {
        return Err(FormatError::corrupt(
            "frame",
            format!(
                "zstd window of {} bytes exceeds {MAX_ZSTD_WINDOW}",
                h.window_size
            ),
        ));
    }
    match zstd::zstd_safe::find_frame_compressed_size(stored) {
        Ok(n) if n == stored.len() => Ok(content_size),
        Ok(n) => Err(FormatError::corrupt(
            "frame",
            format!(
                "zstd frame is {n} bytes, frame length {}: bytes or frames follow it",
                stored.len()
            ),
        )),
        Err(_) => Err(FormatError::corrupt("frame", "zstd frame does not parse")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn compressible_content_is_zstd_with_its_content_size() {
        let mut c = zstd::bulk::Compressor::new(3).expect("zstd");
        let content = b"thinarc ".repeat(1024);
        let (kind, stored) = compress_frame(&content, &mut c).expect("compress");
        assert_eq!(kind, FrameKind::Zstd);
        assert!(stored.len() < content.len());
        assert_eq!(
            frame_content_len(kind, &stored).expect("content size"),
            content.len()
        );
        assert_eq!(
            decompress_frame(kind, &stored, content.len()).expect("decode"),
            content
        );
        assert!(
            decompress_frame(kind, &stored, content.len() - 1).is_err(),
            "too small a capacity"
        );
        assert!(
            decompress_frame(kind, &stored, content.len() + 1).is_err(),
            "wrong length"
        );
    }

    #[test]
    fn incompressible_content_is_raw() {
        let mut c = zstd::bulk::Compressor::new(3).expect("zstd");
        let content = noise(4096);
        let (kind, stored) = compress_frame(&content, &mut c).expect("compress");
        assert_eq!((kind, &stored), (FrameKind::Raw, &content));
        assert_eq!(frame_content_len(kind, &stored).expect("len"), 4096);
        assert_eq!(decompress_frame(kind, &stored, 4096).expect("raw"), content);
        assert!(decompress_frame(kind, &stored, 4095).is_err());
    }

    #[test]
    fn zstd_data_fills_the_frame_exactly() {
        let mut c = zstd::bulk::Compressor::new(3).expect("zstd");
        let content = b"thinarc ".repeat(1024);
        let (kind, stored) = compress_frame(&content, &mut c).expect("compress");
        let skippable = [0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
        for tail in [&skippable[..], &[0, 0, 0, 0], &stored] {
            let mut s = stored.clone();
            s.extend_from_slice(tail);
            assert!(
                decompress_frame(kind, &s, content.len()).is_err(),
                "{} bytes after the frame",
                tail.len()
            );
        }
        assert!(decompress_frame(kind, &stored[..stored.len() - 1], content.len()).is_err());
    }

    #[test]
    fn limits_are_enforced() {
        let mut c = zstd::bulk::Compressor::new(1).expect("zstd");
        let big = vec![1u8; MAX_FRAME_CONTENT as usize + 1];
        assert!(matches!(
            compress_frame(&big, &mut c),
            Err(FormatError::InvalidInput(_))
        ));
        assert!(decompress_frame(FrameKind::Zstd, b"x", MAX_FRAME_CONTENT as usize + 1).is_err());
        assert!(frame_content_len(FrameKind::Zstd, b"not zstd").is_err());
        // A zstd frame without a content size is refused.
        let mut c = zstd::bulk::Compressor::new(1).expect("zstd");
        c.set_parameter(zstd::stream::raw::CParameter::ContentSizeFlag(false))
            .expect("flag");
        let stored = c.compress(&[7u8; 5000]).expect("compress");
        assert!(frame_content_len(FrameKind::Zstd, &stored).is_err());
    }

    /// `stored` rewritten with a window descriptor of `window_byte` instead of the
    /// single-segment flag, and a 4-byte content size.
    fn with_window(stored: &[u8], window_byte: u8) -> Vec<u8> {
        let h = zstd_frame_header(stored).expect("header");
        let content = h.content_size.expect("content size") as u32;
        let checksum = stored[4] & 0x04;
        let mut v = ZSTD_MAGIC.to_vec();
        v.extend([0x80 | checksum, window_byte]);
        v.extend(content.to_le_bytes());
        v.extend(&stored[h.header_len..]);
        v
    }

    #[test]
    fn a_zstd_frame_must_fill_its_stored_length_alone() {
        let mut c = zstd::bulk::Compressor::new(3).expect("zstd");
        let content = b"thinarc ".repeat(1024);
        let (_, stored) = compress_frame(&content, &mut c).expect("compress");
        let h = zstd_frame_header(&stored).expect("header");
        assert!(h.single_segment);
        assert_eq!(h.window_size, content.len() as u64);
        assert_eq!(
            check_zstd_frame(&stored).expect("valid"),
            content.len() as u64
        );
        let empty = c.compress(b"").expect("empty frame");
        let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 1, 0, 0, 0, 0];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("trailing byte", [stored.clone(), vec![0]].concat()),
            ("second frame", [stored.clone(), empty].concat()),
            (
                "skippable frame after",
                [stored.clone(), skippable.clone()].concat(),
            ),
            ("skippable frame first", {
                skippable.extend(&stored);
                skippable
            }),
            ("reserved bit", {
                let mut v = stored.clone();
                v[4] |= 0x08;
                v
            }),
            ("dictionary", {
                let mut v = stored.clone();
                v[4] |= 0x01;
                v
            }),
            ("cut short", stored[..5].to_vec()),
            // Exponent 15: a 32 MiB window.
            ("window above 16 MiB", with_window(&stored, 15 << 3)),
        ];
        for (what, v) in cases {
            assert!(
                matches!(check_zstd_frame(&v), Err(FormatError::Corrupt { .. })),
                "{what}"
            );
            assert!(
                decompress_frame(FrameKind::Zstd, &v, content.len()).is_err(),
                "{what}: decoded"
            );
        }
        // A declared window of exactly 16 MiB (exponent 14) is within the limit, and the
        // frame decodes as before.
        let w16 = with_window(&stored, 14 << 3);
        assert_eq!(
            zstd_frame_header(&w16).expect("header").window_size,
            16 << 20
        );
        assert_eq!(
            decompress_frame(FrameKind::Zstd, &w16, content.len()).expect("decode"),
            content
        );
        let w32 = with_window(&stored, 15 << 3);
        assert!(
            zstd::bulk::decompress(&w32, content.len()).is_ok(),
            "zstd itself accepts the 32 MiB window"
        );
    }
}
