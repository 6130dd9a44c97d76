//! Frozen magic values and limits of format version 1. Do not modify: readers in the
//! field depend on them. Every value is documented in `format-spec/FORMAT.md`.

/// First 8 bytes of every archive: `0x89` (catches 7-bit transports and text-mode
/// conversion, as in PNG) followed by ASCII `THINARC`.
pub const MAGIC: [u8; 8] = *b"\x89THINARC";
/// Last 8 bytes of every archive: `0x89` followed by ASCII `THINEND`, so a truncated
/// file is recognised from its tail alone.
pub const END_MAGIC: [u8; 8] = *b"\x89THINEND";
/// Major format version written and read by this build. A reader rejects any other.
pub const VERSION_MAJOR: u16 = 1;
/// Minor format version written by this build. Minor versions only add optional
/// header fields; readers ignore unknown ones.
pub const VERSION_MINOR: u16 = 1;
/// Size of the fixed preamble: magic, major, minor, header length.
pub const PREAMBLE_LEN: usize = 16;
/// Size of the fixed trailer at the end of the archive.
pub const TRAILER_LEN: usize = 184;
/// Size of one index entry.
pub const ENTRY_LEN: usize = 64;
/// Size of one directory entry.
pub const DIR_ENTRY_LEN: usize = 64;
/// Maximum number of entries in one index segment.
pub const SEGMENT_MAX_ENTRIES: usize = 4096;
/// Largest CBOR header a reader accepts.
pub const MAX_HEADER_LEN: u32 = 1 << 20;
/// Largest uncompressed content of one frame.
pub const MAX_FRAME_CONTENT: u64 = 16 << 20;
/// Largest stored (compressed or raw) frame.
pub const MAX_FRAME_LEN: u64 = MAX_FRAME_CONTENT + (1 << 16);
/// Domain separation prefix of the image digest stream.
pub const IMAGE_DIGEST_DOMAIN: &[u8; 16] = b"thinarc-image-v1";
/// Major format version of encrypted archives (FORMAT.md section 18).
pub const VERSION_MAJOR_ENCRYPTED: u16 = 2;
/// Minor format version of encrypted archives written by this build.
pub const VERSION_MINOR_ENCRYPTED: u16 = 0;
/// Largest wrapped data key in a format 2 header.
pub const MAX_WRAPPED_KEY_LEN: usize = 1024;
/// Domain separation prefix of the keyed image digest stream (format 2).
pub const IMAGE_DIGEST_DOMAIN_KEYED: &[u8; 16] = b"thinarc-image-v2";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_values_follow_their_derivation() {
        assert_eq!(MAGIC[0], 0x89);
        assert_eq!(&MAGIC[1..], b"THINARC");
        assert_eq!(END_MAGIC[0], 0x89);
        assert_eq!(&END_MAGIC[1..], b"THINEND");
        assert_eq!(MAGIC, [0x89, 0x54, 0x48, 0x49, 0x4e, 0x41, 0x52, 0x43]);
        assert_eq!(END_MAGIC, [0x89, 0x54, 0x48, 0x49, 0x4e, 0x45, 0x4e, 0x44]);
        assert_eq!(IMAGE_DIGEST_DOMAIN.len(), 16);
    }

    #[test]
    fn limits_are_the_documented_ones() {
        assert_eq!(
            (PREAMBLE_LEN, TRAILER_LEN, ENTRY_LEN, DIR_ENTRY_LEN),
            (16, 184, 64, 64)
        );
        assert_eq!(SEGMENT_MAX_ENTRIES, 4096);
        assert_eq!(MAX_HEADER_LEN, 1_048_576);
        assert_eq!(MAX_FRAME_CONTENT, 16_777_216);
        assert_eq!(MAX_FRAME_LEN, 16_842_752);
        assert_eq!((VERSION_MAJOR, VERSION_MINOR), (1, 1));
    }
}
