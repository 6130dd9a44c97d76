//! Reading a point of a volume, and rebuilding its archive: the machinery every reader
//! of points shares (restore, verify `--data`, prune's merges, consolidated copies).
//!
//! - `plan` groups a [`ChainCursor`](crate::repo::ChainCursor)'s runs into work units
//!   (coalesced range reads of frames);
//! - `read` fetches units concurrently, decodes each frame once and checks every
//!   block against its digest, and hands the units back in block order;
//! - [`merge`] writes one archive standing for a point from a segment of its chain;
//! - [`random`] reads any byte range of a point through a bounded cache of decoded
//!   chunks (the NBD export).
//!
//! Point floor, below the commands and above the nouns. Imports only `buffers`,
//! `format` and `repo`; must not read sources or write targets (`source`, `target`),
//! nor import a command module (`backup`, `restore`, `prune`, `verify`, `copy`,
//! `status`), `config` or `cli`.

mod merge;
mod plan;
pub mod random;
pub(crate) mod read;

pub use merge::{MergeError, MergeOptions, MergeReport, merge};
pub use random::{CHUNK_BYTES, RandomError, RandomReader, ReadStream};

use crate::format::FormatError;
use crate::repo::RepoError;

/// Why reading a point's blocks failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The repository failed, or an archive's index is corrupt (named).
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A block or frame did not check out.
    #[error("archive {key}: {source}")]
    Corrupt { key: String, source: FormatError },
    /// A fetch or decode task died.
    #[error("read task failed: {0}")]
    Task(String),
}
