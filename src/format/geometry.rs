//! Volume geometry: size in bytes and the fixed block size.

use super::FormatError;

/// Default block size: 64 KiB (see the README's block size benchmark).
pub const DEFAULT_BLOCK_SIZE: u32 = 64 << 10;

/// A block size: a power of two from 4 KiB to 16 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockSize(u32);

impl BlockSize {
    /// Smallest block size the format allows.
    pub const MIN: u32 = 4 << 10;
    /// Largest block size the format allows.
    pub const MAX: u32 = 16 << 20;

    /// Checks that `bytes` is a power of two within [`Self::MIN`]..=[`Self::MAX`].
    ///
    /// # Errors
    /// [`FormatError::InvalidInput`] naming the bad value.
    pub fn new(bytes: u32) -> Result<Self, FormatError> {
        if bytes.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&bytes) {
            Ok(BlockSize(bytes))
        } else {
            Err(FormatError::InvalidInput(format!(
                "block size {bytes} is not a power of two between {} and {}",
                Self::MIN,
                Self::MAX
            )))
        }
    }

    /// The block size in bytes.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// Size and block size of a volume at one point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    size: u64,
    block_size: BlockSize,
}

impl Geometry {
    /// Geometry of a volume of `size` bytes cut into blocks of `block_size`.
    pub fn new(size: u64, block_size: BlockSize) -> Self {
        Geometry { size, block_size }
    }

    /// Volume size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The block size.
    pub fn block_size(&self) -> BlockSize {
        self.block_size
    }

    /// Number of blocks; the last one may be shorter than the block size.
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(u64::from(self.block_size.0))
    }

    /// Byte offset of block `index` (saturating: an index read from a damaged file
    /// must not overflow).
    pub fn offset(&self, index: u64) -> u64 {
        index.saturating_mul(u64::from(self.block_size.0))
    }

    /// An upper bound on the size of an archive of this geometry: see
    /// [`archive_len_bound`](Self::archive_len_bound), with the largest header.
    pub fn max_archive_len(&self) -> u64 {
        use super::{MAX_HEADER_LEN, PREAMBLE_LEN};
        self.archive_len_bound(u64::from(MAX_HEADER_LEN) + PREAMBLE_LEN as u64)
    }

    /// An upper bound on the size of an archive of this geometry whose preamble and
    /// header take `head_len` bytes: frames are never larger than their content
    /// plus, sealed, an AEAD tag (writers store raw what zstd does not shrink, and a
    /// frame holds at least one block), plus one index entry per block (sealed
    /// segments: a tag each), one directory entry per segment, and the trailer.
    pub fn archive_len_bound(&self, head_len: u64) -> u64 {
        use super::{DIR_ENTRY_LEN, ENTRY_LEN, TAG_LEN, TRAILER_LEN};
        let blocks = self.blocks();
        self.size
            .saturating_add(blocks.saturating_mul((ENTRY_LEN + DIR_ENTRY_LEN + TAG_LEN) as u64))
            .saturating_add(head_len + TRAILER_LEN as u64)
    }

    /// Length in bytes of block `index` (0 past the end).
    pub fn block_len(&self, index: u64) -> u64 {
        let start = self.offset(index);
        self.size
            .saturating_sub(start)
            .min(u64::from(self.block_size.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_are_powers_of_two_from_4k_to_16m() {
        for ok in [4096, 8192, 65536, 16 << 20] {
            assert_eq!(BlockSize::new(ok).expect("valid").get(), ok);
        }
        for bad in [0, 1, 2048, 4095, 4097, 12288, 32 << 20, u32::MAX] {
            assert!(BlockSize::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blocks_and_lengths() {
        let bs = BlockSize::new(4096).expect("valid");
        let g = Geometry::new(4 * 4096 + 1000, bs);
        assert_eq!(g.blocks(), 5);
        assert_eq!(g.block_len(3), 4096);
        assert_eq!(g.block_len(4), 1000);
        assert_eq!(g.block_len(5), 0);
        assert_eq!(g.offset(4), 16384);
        assert_eq!(Geometry::new(0, bs).blocks(), 0);
        assert_eq!(Geometry::new(8192, bs).blocks(), 2);
        assert_eq!(Geometry::new(8193, bs).blocks(), 3);
        let huge = Geometry::new(u64::MAX, bs);
        assert_eq!(huge.blocks(), u64::MAX / 4096 + 1);
        assert_eq!(huge.block_len(u64::MAX / 4096), 4095);
        // Indexes from a damaged file must not overflow.
        assert_eq!(huge.offset(u64::MAX), u64::MAX);
        assert_eq!(g.block_len(u64::MAX), 0);
    }
}
