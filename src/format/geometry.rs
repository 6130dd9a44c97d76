//! Volume geometry: size in bytes and the fixed block size.

use super::FormatError;

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

    /// Length in bytes of block `index` (0 past the end).
    pub fn block_len(&self, index: u64) -> u64 {
        let start = self.offset(index);
        self.size
            .saturating_sub(start)
            .min(u64::from(self.block_size.0))
    }
}
