//! The thinarc archive format, versions 1 (plain) and 2 (encrypted): bytes in, bytes out.
//!
//! This module owns every on-disk structure of an archive (preamble, header, index
//! segments, directory, trailer), the block digests and the image digest, frame
//! compression, a streaming sans-IO [`ArchiveWriter`] and the validating decoders
//! used by readers. It must not do I/O, spawn tasks or know about repositories:
//! `format-spec/FORMAT.md` is its contract, and the two change together.
//!
//! Ground floor. Imports only `quote` (to cite bad input briefly); must not import
//! anything else of the crate; every module above may import it.

mod build;
mod digest;
mod frame;
mod geometry;
mod header;
mod id;
mod index;
mod keys;
mod magic;
mod reader;
mod seal;
mod trailer;
mod writer;

pub use build::{ArchivePart, DEFAULT_ZSTD_LEVEL, FRAME_BYTES, Op, compress, push_image};
pub use digest::{Digest, Digester, ImageHasher, ImageRun, zero_block_digest};
pub use frame::{
    FrameDecoder, FrameKind, MAX_ZSTD_WINDOW, ZstdFrameHeader, check_zstd_frame, compress_frame,
    decompress_frame, frame_content_len as stored_frame_content_len, zstd_frame_header,
};
pub use geometry::{BlockSize, DEFAULT_BLOCK_SIZE, Geometry};
#[cfg(test)]
pub(crate) use header::test_header;
pub use header::{
    Compression, EncryptionInfo, Header, LvmSnapshot, ParentRef, Preamble, SourceInfo,
};
pub use id::{ArchiveId, ArchiveIdPrefix, InvalidArchiveId};
pub use index::{DirEntry, EntryKind, IndexEntry, check_segment_sum, decode_segment};
pub use keys::{DigestKey, ENCRYPTION_SCHEME, KeyId, Keys, RepoKey, WriterKey};
pub use magic::*;
pub use reader::{
    ArchiveReader, BlockCheck, IndexCheck, check_ends, check_frame_content, check_frame_extent,
    check_header, decode_directory, frame_content_len,
};
pub use seal::{ArchiveKey, TAG_LEN};
pub use trailer::Trailer;
pub use writer::{ArchiveWriter, EncodedFrame};

/// Why bytes could not be decoded as (part of) a valid archive, or encoded into one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The file does not start (or end) with the thinarc magic: it is not an archive.
    #[error("bad magic: expected {expected}, found {found} (not a thinarc archive)")]
    BadMagic { expected: String, found: String },
    /// The archive was written by a newer, incompatible format version (this build
    /// reads major versions 1, plain, and 2, encrypted).
    #[error(
        "unsupported format version {major}.{minor} (this build reads major versions 1 to {supported})"
    )]
    UnsupportedVersion {
        major: u16,
        minor: u16,
        supported: u16,
    },
    /// The file is shorter than its own structures say it must be.
    #[error("truncated: {what} needs {needed} bytes, only {available} available")]
    Truncated {
        what: &'static str,
        needed: u64,
        available: u64,
    },
    /// A stored checksum does not match the bytes it covers.
    #[error("{what} checksum mismatch (expected {expected}, got {actual})")]
    ChecksumMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    /// A structure is internally inconsistent or violates a format rule.
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// The caller asked the writer to produce something the format cannot hold.
    #[error("invalid archive input: {0}")]
    InvalidInput(String),
}

impl FormatError {
    pub(crate) fn corrupt(what: &'static str, detail: impl Into<String>) -> Self {
        FormatError::Corrupt {
            what,
            detail: detail.into(),
        }
    }
}

/// Reads a little-endian integer of `N` bytes at `at` from a slice whose length the
/// caller has already checked.
pub(crate) fn le<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b[at..at + N].try_into().expect("length checked by caller")
}
