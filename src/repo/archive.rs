//! Reading one committed archive with range reads: trailer and directory from the end,
//! header from the start, index segments and frames on demand.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path;

use super::{ArchiveId, Commit, RepoError, Repository, VolumeName};
use crate::format::{
    ArchiveKey, DIR_ENTRY_LEN, Digest, Digester, DirEntry, FormatError, Geometry, Header,
    IndexCheck, IndexEntry, Keys, PREAMBLE_LEN, Preamble, TRAILER_LEN, Trailer, check_ends,
    check_header, check_segment_sum, decode_directory, decode_segment,
};

/// Bytes read from the end of an archive at open: the trailer and, usually, the whole
/// directory (a 64 KiB tail holds 1021 directory entries, i.e. 4 M blocks).
const TAIL_READ: u64 = 64 << 10;
/// Bytes read from the start of an archive at open: the preamble and, usually, the
/// whole header.
const HEAD_READ: u64 = 16 << 10;

/// The bytes of an archive that opening it reads: `head` from its first byte to the
/// body, `tail` from its directory to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Preread {
    pub head: Bytes,
    pub tail: Bytes,
}

/// A committed archive whose header, trailer and directory have been read and checked.
#[derive(Debug)]
pub struct RemoteArchive {
    repo: Repository,
    /// The commit naming this archive.
    pub commit: Commit,
    key: Path,
    /// The decoded header.
    pub header: Header,
    /// The decoded trailer.
    pub trailer: Trailer,
    directory: Vec<DirEntry>,
    geometry: Geometry,
    /// An encrypted archive's key, when the repository handle holds the repository
    /// key.
    sealing: Option<Arc<ArchiveKey>>,
    /// The digest function of the archive's blocks: keyed for an encrypted archive
    /// when the handle holds a key (repository or writer key), plain otherwise.
    digester: Digester,
    /// The bytes opening it read (for the volume's summary), when the directory came
    /// with the tail read.
    ends: Option<Arc<Preread>>,
}

impl RemoteArchive {
    /// Opens the archive named by `commit`, checking the trailer, layout, header and
    /// directory against their checksums and the commit marker.
    ///
    /// # Errors
    /// [`RepoError::Corrupt`] naming the archive, or [`RepoError::Store`].
    pub async fn open(repo: &Repository, commit: &Commit) -> Result<RemoteArchive, RepoError> {
        // Bytes from the volume's summary go through the same checks; if they do not
        // pass, the archive is read as if there were no summary.
        if let Some(preread) = &commit.preread
            && let Ok(a) = Self::open_checked(repo, commit, true, Some(preread)).await
        {
            return Ok(a);
        }
        match Self::open_checked(repo, commit, true, None).await {
            Err(e @ (RepoError::Truncated { .. } | RepoError::Corrupt { .. })) => {
                // A marker whose size is wrong makes an intact archive look truncated
                // or corrupt: then the marker is named, not the archive.
                match Self::intact_at_listed_size(repo, commit).await {
                    Some(a) if a.commit.size != commit.size => Err(RepoError::BadCommit {
                        key: commit.key.to_string(),
                        detail: format!(
                            "names size {}, archive {} is {} bytes and intact (run `thinarc repair {}` to re-commit it)",
                            commit.size,
                            commit.archive_key(),
                            a.commit.size,
                            commit.volume
                        ),
                    }),
                    _ => Err(e),
                }
            }
            r => r,
        }
    }

    /// The archive object `commit` names, opened at its listed size as an uncommitted
    /// archive (see [`open_uncommitted`](Self::open_uncommitted)), if it is intact
    /// there: then a marker that disagrees with it is at fault, not the archive.
    pub(crate) async fn intact_at_listed_size(
        repo: &Repository,
        commit: &Commit,
    ) -> Option<RemoteArchive> {
        let size = repo.store().head(&commit.archive_key()).await.ok()?.size;
        Self::open_uncommitted(repo, &commit.volume, &commit.object, size)
            .await
            .ok()
    }

    /// Opens archive object `object` of `volume` that no valid commit marker names (a
    /// lost or corrupt marker, or a run killed between upload and commit), `size` bytes
    /// long as listed: the same checks as [`open`](Self::open), the archive digest taken
    /// from its own trailer. The returned archive's `commit` is the marker that would
    /// commit it (generation 0, key of generation 0).
    ///
    /// # Errors
    /// As [`open`](Self::open); [`RepoError::BadCommit`] when the object name is not
    /// `<seq>-<archive id>.tarc` or disagrees with the header.
    pub async fn open_uncommitted(
        repo: &Repository,
        volume: &VolumeName,
        object: &str,
        size: u64,
    ) -> Result<RemoteArchive, RepoError> {
        let parsed = parse_archive_name(object)
            .and_then(|(seq, id)| Some((seq, ArchiveId::parse(id).ok()?)));
        let (seq, archive_id) = parsed.ok_or_else(|| RepoError::BadCommit {
            key: volume.archives_prefix().join(object).to_string(),
            detail: "not an archive object name (<seq>-<archive id>.tarc)".into(),
        })?;
        let commit = Commit {
            volume: volume.clone(),
            seq,
            generation: 0,
            archive_id,
            object: object.to_string(),
            size,
            digest: Digest::default(),
            key: volume.commit_key(seq, 0),
            preread: None,
        };
        let mut archive = Self::open_checked(repo, &commit, false, None).await?;
        archive.commit.digest = archive.trailer.trailer_sha256;
        Ok(archive)
    }

    /// Opens and checks the archive `commit` names, from its head and tail as read
    /// now, or as `preread` holds them.
    async fn open_checked(
        repo: &Repository,
        commit: &Commit,
        check_digest: bool,
        preread: Option<&Arc<Preread>>,
    ) -> Result<RemoteArchive, RepoError> {
        let key = commit.archive_key();
        let corrupt = |source: FormatError| RepoError::Corrupt {
            key: key.to_string(),
            source,
        };
        let size = commit.size;
        if size < (PREAMBLE_LEN + TRAILER_LEN) as u64 {
            return Err(corrupt(FormatError::Truncated {
                what: "archive",
                needed: (PREAMBLE_LEN + TRAILER_LEN) as u64,
                available: size,
            }));
        }
        // Head and tail in parallel (FORMAT.md §13.2): the preamble is checked first
        // (magic, then version), so an archive of a newer major version, or an object
        // that is no archive at all, says so instead of looking corrupt or short; the
        // tail holds the trailer and usually the whole directory.
        let (head, tail, tail_start) = match preread {
            Some(p) if p.tail.len() as u64 <= size => {
                (p.head.clone(), p.tail.clone(), size - p.tail.len() as u64)
            }
            _ => {
                let tail_start = size.saturating_sub(TAIL_READ);
                let reads = futures::try_join!(
                    read_range(repo, &key, 0..size.min(HEAD_READ), size),
                    read_range(repo, &key, tail_start..size, size)
                );
                match reads {
                    Ok((head, tail)) => (head, tail, tail_start),
                    Err(e) => {
                        return Err(not_an_archive(repo, &key, &e).await.map_or(e, corrupt));
                    }
                }
            }
        };
        let (_, trailer) = check_ends(&head, &tail, size).map_err(corrupt)?;
        if check_digest && trailer.trailer_sha256 != commit.digest {
            return Err(RepoError::BadCommit {
                key: commit.key.to_string(),
                detail: format!(
                    "names archive digest {}, archive {key} has {} (run `thinarc repair {}` to re-commit the archive if it is intact)",
                    commit.digest, trailer.trailer_sha256, commit.volume
                ),
            });
        }
        let dir_range = trailer.directory_offset..size - TRAILER_LEN as u64;
        let ends_tail = (dir_range.start >= tail_start)
            .then(|| tail.slice((dir_range.start - tail_start) as usize..));
        let dir_bytes = if dir_range.start >= tail_start {
            tail.slice(
                (dir_range.start - tail_start) as usize..(dir_range.end - tail_start) as usize,
            )
        } else {
            read_range(repo, &key, dir_range, size).await?
        };
        let head = if trailer.body_offset <= head.len() as u64 {
            head.slice(..trailer.body_offset as usize)
        } else {
            read_range(repo, &key, 0..trailer.body_offset, size).await?
        };
        let (header, geometry) = check_header(&head, &trailer).map_err(corrupt)?;
        let ends = match (preread, ends_tail) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(tail)) => Some(Arc::new(Preread {
                head: head.clone(),
                tail,
            })),
            (None, None) => None,
        };
        if commit.archive_id != header.archive_id || header.seq != commit.seq {
            return Err(RepoError::BadCommit {
                key: commit.key.to_string(),
                detail: format!(
                    "names archive {} seq {}, the archive is {} seq {} (run `thinarc repair {}`)",
                    commit.archive_id, commit.seq, header.archive_id, header.seq, commit.volume
                ),
            });
        }
        let directory =
            decode_directory(&dir_bytes, &trailer, &header, &geometry).map_err(corrupt)?;
        debug_assert_eq!(dir_bytes.len(), directory.len() * DIR_ENTRY_LEN);
        let (sealing, digester) = check_encryption(repo, commit, &header).map_err(corrupt)?;
        Ok(RemoteArchive {
            repo: repo.clone(),
            commit: commit.clone(),
            key,
            header,
            trailer,
            directory,
            geometry,
            sealing,
            digester,
            ends,
        })
    }

    /// The bytes opening the archive read, from its first byte to its body and from
    /// its directory to its end (for the volume's summary): `None` when the directory
    /// did not come with the tail read.
    pub(crate) fn ends(&self) -> Option<Arc<Preread>> {
        self.ends.clone()
    }

    /// Whether the archive is encrypted (format 2).
    pub fn is_encrypted(&self) -> bool {
        self.header.encryption.is_some()
    }

    /// Whether the index and frames can be read: a plain archive, or an encrypted one
    /// opened with the repository key.
    pub fn is_readable(&self) -> bool {
        !self.is_encrypted() || self.sealing.is_some()
    }

    /// The digest function of the archive's blocks and image.
    pub fn digester(&self) -> &Digester {
        &self.digester
    }

    /// The 1.x frame (zstd or raw) the stored frame at `offset`, whose slot 0 is block
    /// `first_block`, holds: the stored bytes themselves in a plain archive, opened
    /// in an encrypted one.
    ///
    /// # Errors
    /// [`FormatError::Corrupt`] when a sealed frame fails authentication;
    /// [`FormatError::InvalidInput`] for a sealed frame without the key (a reader
    /// asks [`Repository::read_key`] first).
    pub fn open_frame<'a>(
        &self,
        offset: u64,
        first_block: u64,
        stored: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, FormatError> {
        if !self.is_encrypted() {
            return Ok(stored.into());
        }
        match &self.sealing {
            Some(k) => Ok(k.open_frame(offset, first_block, stored)?.into()),
            None => Err(FormatError::InvalidInput(format!(
                "the sealed frame at offset {offset} needs the repository key"
            ))),
        }
    }

    /// The key of the archive object.
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// The volume geometry at this point.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The index segment directory.
    pub fn directory(&self) -> &[DirEntry] {
        &self.directory
    }

    /// The whole-index check of this archive (FORMAT.md §13.3), to be fed its entries
    /// in block order.
    pub fn index_check(&self) -> IndexCheck {
        IndexCheck::new(
            &self.header,
            &self.trailer,
            self.geometry,
            &self.directory,
            &self.digester,
        )
    }

    /// `source` as the corruption of this archive.
    pub(crate) fn corrupt(&self, source: FormatError) -> RepoError {
        RepoError::Corrupt {
            key: self.key.to_string(),
            source,
        }
    }

    /// Reads and checks index segment `i` (opening it, in an encrypted archive).
    ///
    /// # Errors
    /// [`RepoError::Corrupt`] or [`RepoError::Store`]; [`RepoError::NeedsKey`] for an
    /// encrypted archive when the handle holds no repository key.
    pub async fn segment(&self, i: usize) -> Result<Vec<IndexEntry>, RepoError> {
        if self.is_encrypted() && self.sealing.is_none() {
            self.repo.read_key("reading an archive's index")?;
        }
        let bytes = self.segment_bytes(i).await?;
        decode_segment(
            &bytes,
            &self.directory[i],
            &self.geometry,
            self.trailer.body_offset..self.trailer.directory_offset,
            self.sealing.as_deref(),
        )
        .map_err(|source| self.corrupt(source))
    }

    /// Reads index segment `i` and checks it against its checksum only: what can be
    /// checked of an encrypted archive without its key.
    ///
    /// # Errors
    /// [`RepoError::Corrupt`] or [`RepoError::Store`].
    pub async fn check_segment_sum(&self, i: usize) -> Result<(), RepoError> {
        let bytes = self.segment_bytes(i).await?;
        check_segment_sum(&bytes, &self.directory[i]).map_err(|source| self.corrupt(source))
    }

    async fn segment_bytes(&self, i: usize) -> Result<Bytes, RepoError> {
        let d = &self.directory[i];
        read_range(
            &self.repo,
            &self.key,
            d.offset..d.offset + d.len(),
            self.commit.size,
        )
        .await
    }

    /// Reads bytes `range` of the archive (checked to lie inside it and to come back
    /// whole).
    ///
    /// # Errors
    /// [`RepoError::Corrupt`] or [`RepoError::Store`].
    pub async fn read(&self, range: Range<u64>) -> Result<Bytes, RepoError> {
        if range.end > self.commit.size || range.start > range.end {
            return Err(RepoError::Corrupt {
                key: self.key.to_string(),
                source: FormatError::corrupt(
                    "index",
                    format!(
                        "range {range:?} outside the {}-byte archive",
                        self.commit.size
                    ),
                ),
            });
        }
        read_range(&self.repo, &self.key, range, self.commit.size).await
    }
}

/// The reader rules of FORMAT.md section 18 for the archive `commit` names, with
/// `header`, in `repo`: an encrypted repository holds only encrypted (format 2)
/// archives under its own key, stored under the volume their header names; a plain
/// one only format 1 archives. Returns the archive's key (its data key unwrapped when
/// the handle holds the repository key) and the digest function of its blocks.
fn check_encryption(
    repo: &Repository,
    commit: &Commit,
    header: &Header,
) -> Result<(Option<Arc<ArchiveKey>>, Digester), FormatError> {
    let bad = |detail: String| FormatError::corrupt("encryption", detail);
    let (enc, expected) = match (&header.encryption, &repo.config.encryption) {
        (None, None) => return Ok((None, Digester::Plain)),
        (Some(_), None) => {
            return Err(bad(
                "the archive is encrypted (format 2), the repository is not: it was copied from an encrypted repository (remove it, or copy with `thinarc copy --consolidate`)".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(bad(
                "the archive is not encrypted (format 1), the repository is: it was copied from an unencrypted repository (remove it, or copy with `thinarc copy --consolidate`)".into(),
            ));
        }
        (Some(enc), Some(expected)) => (enc, expected),
    };
    if enc.key_id != expected.key_id {
        return Err(bad(format!(
            "archive {} is encrypted under key {}, which this repository does not list (its key is {})",
            header.archive_id, enc.key_id, expected.key_id
        )));
    }
    if header.volume_name != commit.volume.as_str() {
        return Err(bad(format!(
            "archive {} belongs to volume {}, not to {} it is stored under",
            header.archive_id,
            crate::quote::excerpt(&header.volume_name),
            commit.volume
        )));
    }
    match repo.keys() {
        Keys::Locked => Ok((None, Digester::Plain)),
        Keys::Writer(w) => Ok((None, Digester::Keyed(w.digest_key.clone()))),
        Keys::Owner(k) => {
            let key = ArchiveKey::open(k, header)?;
            let digester = key.digester().clone();
            Ok((Some(Arc::new(key)), digester))
        }
    }
}

/// When `e` says archive `key` is shorter than its marker: the reason if what the
/// object holds is no archive at all, or one of another major version, which a reader
/// reports before anything else (FORMAT.md §13.1).
async fn not_an_archive(repo: &Repository, key: &Path, e: &RepoError) -> Option<FormatError> {
    let &RepoError::Truncated { actual, .. } = e else {
        return None;
    };
    let start = actual.min(PREAMBLE_LEN as u64);
    let bytes = read_range(repo, key, 0..start, actual).await.ok()?;
    match Preamble::decode(&bytes) {
        Err(e @ (FormatError::BadMagic { .. } | FormatError::UnsupportedVersion { .. })) => Some(e),
        _ => None,
    }
}

/// `<seq>-<archive id>.tarc`: the seq and archive id of an archive object name.
pub(crate) fn parse_archive_name(name: &str) -> Option<(u64, &str)> {
    let (seq, rest) = name.strip_suffix(".tarc")?.split_once('-')?;
    let digits = seq.len() == 12 && seq.bytes().all(|c| c.is_ascii_digit());
    let id = !rest.is_empty() && rest.bytes().all(|c| c.is_ascii_hexdigit());
    (digits && id).then(|| Some((seq.parse().ok()?, rest)))?
}

/// A ranged GET from an object store whose body is copied into one buffer of the
/// range's length as it arrives, each chunk dropped once copied, so that the HTTP
/// client reuses its read buffer for the next chunk. (`get_range` keeps the first
/// chunk until the second one comes: each connection then holds two read buffers,
/// 8 MiB over the 10 reads in flight of a restore from S3.)
async fn get_range_copied(
    store: &dyn object_store::ObjectStore,
    key: &Path,
    range: Range<u64>,
) -> object_store::Result<Bytes> {
    let options = object_store::GetOptions {
        range: Some(range.clone().into()),
        ..Default::default()
    };
    let mut body = store.get_opts(key, options).await?.into_stream();
    let mut buf = Vec::with_capacity((range.end - range.start) as usize);
    while let Some(chunk) = futures::StreamExt::next(&mut body).await {
        buf.extend_from_slice(&chunk?);
    }
    Ok(buf.into())
}

/// A ranged GET of archive `key`, which its commit marker says is `size` bytes long,
/// whose result must be exactly the requested length. An object shorter than `size`
/// is reported as [`RepoError::Truncated`], whatever the store said about the range.
async fn read_range(
    repo: &Repository,
    key: &Path,
    range: Range<u64>,
    size: u64,
) -> Result<Bytes, RepoError> {
    let want = range.end - range.start;
    let result = super::retry::retry(|| async {
        if repo.is_local() {
            repo.store().get_range(key, range.clone()).await
        } else {
            get_range_copied(repo.store().as_ref(), key, range.clone()).await
        }
    })
    .await;
    let short = match &result {
        Ok(bytes) => bytes.len() as u64 != want,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(RepoError::Corrupt {
                key: key.to_string(),
                source: FormatError::corrupt("archive", "the archive object is missing"),
            });
        }
        Err(_) => true,
    };
    if short
        && let Ok(meta) = repo.store().head(key).await
        && meta.size < size
    {
        return Err(RepoError::Truncated {
            key: key.to_string(),
            actual: meta.size,
            expected: size,
        });
    }
    let bytes = result.map_err(RepoError::store("read", key))?;
    if bytes.len() as u64 != want {
        return Err(RepoError::Corrupt {
            key: key.to_string(),
            source: FormatError::Truncated {
                what: "archive object",
                needed: range.end,
                available: range.start + bytes.len() as u64,
            },
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_parse() {
        assert_eq!(
            parse_archive_name("000000000012-00ff.tarc"),
            Some((12, "00ff"))
        );
        for bad in [
            "12-00ff.tarc",
            "000000000012-.tarc",
            "000000000012-zz.tarc",
            "000000000012-00ff.tarc#1",
            "x",
        ] {
            assert_eq!(parse_archive_name(bad), None, "{bad}");
        }
    }
}
