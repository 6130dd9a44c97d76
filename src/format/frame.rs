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
                // Exactly one zstd frame fills the stored bytes (FORMAT.md 6.1): no
                // skippable frame after it, which zstd itself would pass over.
                match zstd::zstd_safe::find_frame_compressed_size(stored) {
                    Ok(n) if n == stored.len() => {}
                    _ => {
                        return Err(FormatError::corrupt(
                            "frame",
                            format!(
                                "the {} stored bytes are not exactly one zstd frame",
                                stored.len()
                            ),
                        ));
                    }
                }
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
/// [`FormatError::Corrupt`] if the zstd header is missing, unreadable, lacks the
/// content size or gives one above [`MAX_FRAME_CONTENT`].
pub fn frame_content_len(kind: FrameKind, stored: &[u8]) -> Result<usize, FormatError> {
    let len = match kind {
        FrameKind::Raw => stored.len() as u64,
        FrameKind::Zstd => match zstd::zstd_safe::get_frame_content_size(stored) {
            Ok(Some(n)) => n,
            Ok(None) => {
                return Err(FormatError::corrupt(
                    "frame",
                    "zstd frame header lacks the content size",
                ));
            }
            Err(_) => return Err(FormatError::corrupt("frame", "not a zstd frame")),
        },
    };
    if len > MAX_FRAME_CONTENT {
        return Err(FormatError::corrupt(
            "frame",
            format!("content size {len} exceeds {MAX_FRAME_CONTENT}"),
        ));
    }
    Ok(len as usize)
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
}
