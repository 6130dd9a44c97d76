//! `thinarc serve`, `mount` and `umount`: one point of a volume as an NBD export,
//! served until stopped to any number of clients at once, or attached to a kernel NBD
//! device and mounted (`mount`).
//!
//! The chain is resolved once when the export opens; reads go through the point
//! floor's [`RandomReader`] (only the frames holding the blocks asked for, decoded
//! once into a bounded cache, every block checked). `conn` speaks the protocol of
//! [`crate::nbd`] on one connection; `overlay` keeps what clients write, with
//! `--overlay`. The repository is never written.
//!
//! Commands floor. Imports only `nbd`, `point` and `repo`; must not import another
//! command, `config`, `nightly` or `cli`.

mod conn;
mod mount;
mod overlay;

pub use mount::{MountError, MountOptions, Mounted, mount, umount};
pub use overlay::{GRANULE, Overlay, OverlayError};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;

use crate::point::{RandomReader, ReadStream};
use crate::repo::{ArchiveId, PointSelector, RepoError, Repository, VolumeName};

/// The logical block size of a kernel NBD device: 512 bytes, so that a file system
/// with 1 KiB blocks (a small ext4) mounts too.
const SECTOR: u64 = 512;

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The point cannot be resolved (unknown volume or point, broken chain, a store
    /// error).
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The overlay cannot be opened.
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    /// The socket path is taken by a server that answers, or by something that is not
    /// a socket.
    #[error("socket {path}: {detail}")]
    SocketInUse { path: String, detail: String },
    /// Binding or accepting failed.
    #[error("{what} {address}: {source}")]
    Io {
        what: &'static str,
        address: String,
        source: std::io::Error,
    },
}

/// Where the export listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix socket at this path (created; removed when serving ends).
    Unix(PathBuf),
    /// A TCP address, `HOST:PORT`.
    Tcp(String),
}

/// What `serve` exports.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The point served.
    pub at: PointSelector,
    /// Bytes of decoded chunks kept in the cache.
    pub cache: u64,
    /// Accept writes into this copy-on-write overlay file.
    pub overlay: Option<PathBuf>,
}

/// One point of a volume, open for random reads.
pub struct Export {
    reader: Arc<RandomReader>,
    overlay: Option<Overlay>,
    repo: Repository,
    volume: VolumeName,
    /// The volume's name: the export's name (the empty name, a client's default,
    /// names it too).
    pub name: String,
    /// The point's sequence number.
    pub seq: u64,
    /// The point's archive.
    pub archive: ArchiveId,
}

impl Export {
    /// Opens the point `opts.at` of `volume`: its chain is resolved now, once; and
    /// its overlay, if any.
    ///
    /// # Errors
    /// [`ServeError::Repo`], [`ServeError::Overlay`].
    pub async fn open(
        repo: &Repository,
        volume: &VolumeName,
        opts: &ServeOptions,
    ) -> Result<Export, ServeError> {
        let commits = repo.existing_commits(volume).await?;
        let chain = repo.resolve(&commits, &opts.at).await?;
        let tip = chain.tip().clone();
        let reader = Arc::new(RandomReader::new(repo, chain, opts.cache));
        let overlay = match &opts.overlay {
            Some(path) => {
                let identity = format!(
                    "thinarc overlay 1: volume {volume} seq {} archive {} size {}",
                    tip.header.seq,
                    tip.commit.archive_id,
                    reader.size()
                );
                Some(Overlay::open(path, identity, reader.size())?)
            }
            None => None,
        };
        Ok(Export {
            reader,
            overlay,
            repo: repo.clone(),
            volume: volume.clone(),
            name: volume.to_string(),
            seq: tip.header.seq,
            archive: tip.commit.archive_id.clone(),
        })
    }

    /// Whether writes are accepted (into the overlay).
    pub fn writable(&self) -> bool {
        self.overlay.is_some()
    }

    /// Fills `out` with the export's bytes from `offset`.
    async fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), OverlayError> {
        match &self.overlay {
            Some(o) => o.read(&self.reader, offset, out).await,
            None => Ok(self.reader.read(offset, out).await?),
        }
    }

    /// Why reads fail when the point is gone since serving began: pruned, or
    /// rewritten by a prune's merge, and its archives deleted past the grace period
    /// (`prune --no-grace`). `None` while the point is committed as it is served (the
    /// error is then the store's or the data's), or when the catalog cannot be read.
    async fn pruned(&self) -> Option<String> {
        let commits = match self.repo.existing_commits(&self.volume).await {
            Ok(c) => c,
            Err(RepoError::VolumeNotFound { .. } | RepoError::NoIntactPoint { .. }) => Vec::new(),
            Err(_) => return None,
        };
        let point = format!(
            "point {} seq {} (archive {})",
            self.name, self.seq, self.archive
        );
        match commits.iter().find(|c| c.seq == self.seq) {
            Some(c) if c.archive_id == self.archive => None,
            Some(c) => Some(format!(
                "{point} was rewritten by a prune while it was served (it is now archive {}) \
                 and the archives it was served from are deleted: serve it again",
                c.archive_id
            )),
            None => Some(format!(
                "{point} was pruned while it was served and its archives are deleted \
                 (past the grace period): serve a point that exists (see `thinarc list {}`)",
                self.name
            )),
        }
    }

    /// Notes that a client (`stream`) reads `range`: a sequential reader gets the
    /// point's next chunks loaded ahead.
    fn read_ahead(&self, stream: &mut ReadStream, range: std::ops::Range<u64>) {
        self.reader.read_ahead(stream, range);
    }

    /// The runs of `range` that read as zero (`true`) or data, at most `max`: the
    /// point's, with what the overlay wrote as data.
    async fn extents(
        &self,
        range: std::ops::Range<u64>,
        max: usize,
    ) -> Result<Vec<(u64, bool)>, OverlayError> {
        let Some(o) = &self.overlay else {
            return Ok(self.reader.extents(range, max).await?);
        };
        let written = o.written().await;
        let mut runs: Vec<(u64, bool)> = Vec::new();
        for (part, w) in written.split(range) {
            let parts = if w {
                vec![(part.end - part.start, false)]
            } else {
                self.reader.extents(part, max).await?
            };
            for (len, zero) in parts {
                let full = runs.len() == max.max(1);
                match runs.last_mut() {
                    Some((l, z)) if *z == zero => *l += len,
                    _ if full => return Ok(runs),
                    _ => runs.push((len, zero)),
                }
            }
        }
        Ok(runs)
    }

    /// Saves the overlay (data and map), if any.
    ///
    /// # Errors
    /// [`OverlayError::Io`].
    pub async fn flush(&self) -> Result<(), OverlayError> {
        match &self.overlay {
            Some(o) => o.flush().await,
            None => Ok(()),
        }
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.reader.size()
    }

    /// The size of the kernel's device: whole sectors of [`SECTOR`] bytes, the
    /// export's size rounded up (the padding reads as zeros), so that a volume whose
    /// size is not a multiple of the sector shows its last bytes too.
    fn device_size(&self) -> u64 {
        self.size().next_multiple_of(SECTOR)
    }

    /// The volume's block size: the preferred request size.
    fn block_size(&self) -> u32 {
        self.reader.chain().tip().geometry().block_size().get()
    }

    /// Whether a client's export name names this export.
    fn is_named(&self, name: &str) -> bool {
        name.is_empty() || name == self.name
    }
}

/// A bound listener; a Unix socket's file is removed when it is dropped.
pub struct Listener {
    inner: Inner,
    /// The NBD URI a client connects to.
    pub uri: String,
}

enum Inner {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Inner::Unix(_, path) = &self.inner {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Listener {
    /// Binds `address`. A Unix socket file left by a server that died is replaced;
    /// one a live server answers on, or a path that is not a socket, is refused.
    ///
    /// # Errors
    /// [`ServeError::SocketInUse`], [`ServeError::Io`].
    pub async fn bind(address: &Address) -> Result<Listener, ServeError> {
        match address {
            Address::Unix(path) => {
                clear_stale_socket(path).await?;
                let l = UnixListener::bind(path).map_err(|source| ServeError::Io {
                    what: "cannot listen on socket",
                    address: path.display().to_string(),
                    source,
                })?;
                Ok(Listener {
                    uri: format!("nbd+unix:///?socket={}", path.display()),
                    inner: Inner::Unix(l, path.clone()),
                })
            }
            Address::Tcp(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::Io {
                        what: "cannot listen on",
                        address: addr.clone(),
                        source,
                    })?;
                let local = l.local_addr().map_err(|source| ServeError::Io {
                    what: "cannot listen on",
                    address: addr.clone(),
                    source,
                })?;
                Ok(Listener {
                    uri: format!("nbd://{local}/"),
                    inner: Inner::Tcp(l),
                })
            }
        }
    }
}

/// Removes a socket file nobody answers on at `path`.
async fn clear_stale_socket(path: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let in_use = |detail: &str| ServeError::SocketInUse {
        path: path.display().to_string(),
        detail: detail.to_owned(),
    };
    if !meta.file_type().is_socket() {
        return Err(in_use(
            "exists and is not a socket (remove it or name another path)",
        ));
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(in_use(
            "another server is listening on it (stop it or name another path)",
        ));
    }
    std::fs::remove_file(path).map_err(|source| ServeError::Io {
        what: "cannot remove the stale socket",
        address: path.display().to_string(),
        source,
    })
}

/// Serves `export` on `listener` until `stop` resolves; then open connections are
/// closed and the listener dropped (its socket file removed).
///
/// # Errors
/// [`ServeError::Io`] when accepting fails for good.
pub async fn serve(
    export: Arc<Export>,
    listener: Listener,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut conns = JoinSet::new();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = accept(&listener) => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let export = export.clone();
                conns.spawn(async move {
                    tracing::info!(peer = %peer, "client connected");
                    match conn::handle(stream, export).await {
                        Ok(()) => tracing::info!(peer = %peer, "client disconnected"),
                        Err(e) => tracing::warn!(peer = %peer, "connection ended: {e}"),
                    }
                });
            }
            // A client that went away between connect and accept, or too many open
            // files for a moment: log and go on.
            Err(e) => {
                tracing::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    conns.shutdown().await;
    drop(listener);
    export.flush().await?;
    Ok(())
}

/// A stream of either kind.
type Stream = Box<dyn conn::Io>;

async fn accept(listener: &Listener) -> std::io::Result<(Stream, String)> {
    match &listener.inner {
        Inner::Unix(l, path) => {
            let (s, _) = l.accept().await?;
            Ok((Box::new(s), path.display().to_string()))
        }
        Inner::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            s.set_nodelay(true)?;
            Ok((Box::new(s), peer.to_string()))
        }
    }
}
