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
    if content_len as u64 > MAX_FRAME_CONTENT {
        return Err(FormatError::corrupt(
            "frame",
            format!("content length {content_len} too large"),
        ));
    }
    let content = match kind {
        FrameKind::Raw => stored.to_vec(),
        // `decompress` never allocates more than the capacity given, and a frame whose
        // content exceeds it is an error: a hostile frame cannot balloon memory.
        FrameKind::Zstd => zstd::bulk::decompress(stored, content_len)
            .map_err(|e| FormatError::corrupt("frame", format!("zstd: {e}")))?,
    };
    if content.len() != content_len {
        return Err(FormatError::corrupt(
            "frame",
            format!(
                "content is {} bytes, index says {content_len}",
                content.len()
            ),
        ));
    }
    Ok(content)
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
