//! Reading a restored target back to check its image digest.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::format::{Digest, Geometry, ImageHasher};
use crate::target::TargetError;

/// Reads the first `geometry.size()` bytes of `path` and returns their image digest.
///
/// # Errors
/// [`TargetError::Open`] or [`TargetError::Write`] (naming the read that failed).
pub fn read_back(path: &Path, geometry: Geometry) -> Result<Digest, TargetError> {
    let file = std::fs::File::open(path).map_err(|source| TargetError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let bs = u64::from(geometry.block_size().get());
    let per_read = (4u64 << 20).div_ceil(bs).max(1);
    let mut hasher = ImageHasher::new(geometry);
    let mut buf = Vec::new();
    let mut block = 0;
    while block < geometry.blocks() {
        let count = per_read.min(geometry.blocks() - block);
        let offset = geometry.offset(block);
        let len = (geometry.offset(block + count).min(geometry.size()) - offset) as usize;
        buf.resize(len, 0);
        file.read_exact_at(&mut buf, offset)
            .map_err(|source| TargetError::Write {
                path: path.to_path_buf(),
                offset,
                source,
            })?;
        for data in buf.chunks(bs as usize) {
            if crate::backup::is_zero(data) {
                hasher.zeros(1);
            } else {
                hasher.data(&Digest::of(data));
            }
        }
        block += count;
    }
    hasher.finish().map_err(|e| TargetError::Write {
        path: path.to_path_buf(),
        offset: geometry.size(),
        source: std::io::Error::other(e.to_string()),
    })
}
