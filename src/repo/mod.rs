//! The repository on `object_store`: layout, config, publishing archives, the catalog
//! and chain resolution.
//!
//! Only operations that both the local file system and S3-compatible stores provide
//! are used: list, ranged get, multipart put, create-if-absent put and delete. The
//! archives and their commit markers are the truth; nothing here keeps local state.
//! This module must not read sources or write targets.
//!
//! Nouns floor (with `source` and `target`). Imports only `format`, `quote` and
//! `throttle`; must not import `source`, `target`, `point`, a command module or `cli`.
//!
//! ```
//! use std::sync::Arc;
//! use thinarc::repo::{Repository, RepoError, VolumeName};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), RepoError> {
//! let store = Arc::new(object_store::memory::InMemory::new());
//! let repo = Repository::create(store.clone(), "memory://demo").await?;
//! let again = Repository::open(store, "memory://demo").await?;
//! assert_eq!(repo.config().id, again.config().id);
//! assert!(again.volumes().await?.is_empty());
//! let volume = VolumeName::new("vg0/web")?;
//! assert!(matches!(again.existing_commits(&volume).await, Err(RepoError::VolumeNotFound { .. })));
//! # Ok(())
//! # }
//! ```

mod archive;
mod catalog;
mod chain;
mod cleanup;
mod clock;
mod config;
mod counting;
mod damage;
mod keys;
mod layout;
mod location;
mod lock;
mod marker;
mod publish;
mod repair;
mod retry;
mod s3http;
mod summary;
mod uploads;

use std::sync::Arc;

use object_store::ObjectStore;

pub use archive::RemoteArchive;
pub use catalog::{
    CatalogProblem, Chain, Commit, PointInfo, PointSelector, VolumeCatalog, VolumeListing,
};
pub use chain::{ChainCursor, Resolved, SegmentCache};
pub use cleanup::{Cleaned, LEFTOVER_GRACE};
pub use clock::clock_went_back;
pub use config::{EncryptionConfig, RepoConfig};
pub use counting::RequestCounts;
pub use damage::{
    ChainDamage, DamageKind, DamageRecord, DamageScope, MAX_DAMAGED_BLOCKS, Newer, chain_damage,
};
pub use keys::{
    ARGON2_M_COST, ARGON2_P_COST, ARGON2_T_COST, Kdf, KeyError, KeySlot, Secrets, SlotKind, Slots,
    Unlocked, WriterKeyFile, parse_identities, parse_recipient,
};
pub use layout::{
    ArchiveId, ArchiveIdPrefix, InvalidArchiveId, VolumeName, new_archive_id, new_id,
};
pub use location::{Location, OpenedStore, open_store, parse_location};
pub use lock::{
    DEFAULT_LOCK_TTL, HeldLock, LOCK_TTL_ENV, LockError, LockInfo, VolumeLock, break_locks,
    held_locks, held_locks_listed, hostname, lock_ttl, settle_dropped_locks,
};
pub use publish::{ArchiveUpload, DroppedUploads, Published, settle_dropped_uploads};
pub use repair::{RepairAction, RepairScope};
pub use uploads::PendingUpload;

use crate::format::{FormatError, Keys, RepoKey, WriterKey};

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// The location holds no repository config.
    #[error("no thinarc repository at {location} (create one with `thinarc -r {location} init`)")]
    NotARepository { location: String },
    /// The location holds something that is not a thinarc repository config.
    #[error("{location} is not a thinarc repository: {detail}")]
    NotThinarc { location: String, detail: String },
    /// `init` on a location that already holds a repository.
    #[error("a thinarc repository already exists at {location}")]
    AlreadyInitialized { location: String },
    /// The repository URL could not be understood or opened.
    #[error("cannot open repository {location}: {detail}")]
    BadLocation { location: String, detail: String },
    /// The object store failed.
    #[error("{action} {key}: {source}")]
    Store {
        action: &'static str,
        key: String,
        source: object_store::Error,
    },
    /// An object is not what it must be.
    #[error(
        "archive {key} is corrupt: {source} (run `thinarc verify`; other volumes are unaffected)"
    )]
    Corrupt { key: String, source: FormatError },
    /// An archive object is shorter than its commit marker says.
    #[error(
        "archive {key} is truncated: {actual} of {expected} bytes (run `thinarc verify`; other volumes are unaffected)"
    )]
    Truncated {
        key: String,
        actual: u64,
        expected: u64,
    },
    /// A commit marker is malformed or disagrees with its archive.
    #[error("commit {key} is invalid: {detail}")]
    BadCommit { key: String, detail: String },
    /// No volume of that name.
    #[error("no volume named {} in the repository (known: {known})", crate::quote::excerpt(.name))]
    VolumeNotFound { name: String, known: String },
    /// The volume exists but none of its points is committed intact (its markers are
    /// corrupt, or its archives are not committed).
    #[error("volume {volume} has no intact point: {problem}")]
    NoIntactPoint { volume: String, problem: String },
    /// The requested point does not exist.
    #[error("volume {volume} has no archive matching {at:?} (see `thinarc list {volume}`)")]
    PointNotFound { volume: String, at: String },
    /// A delta's parent is missing or is not the archive it names.
    #[error("chain of {volume} is broken at seq {seq}: {detail}")]
    ChainBroken {
        volume: String,
        seq: u64,
        detail: String,
    },
    /// Another writer committed the same point first.
    #[error(
        "another backup of {volume} committed seq {seq} first; this run's archive was discarded (run it again)"
    )]
    Conflict { volume: String, seq: u64 },
    /// The commit marker could not be written; this run's archive was removed, or is
    /// left for the next run (`removed` says which).
    #[error("commit {key} failed: {source}; {removed}")]
    CommitFailed {
        key: String,
        removed: String,
        source: object_store::Error,
    },
    /// The commit marker exists but could not be read back: whether this run's archive
    /// was committed is unknown. Nothing is deleted; `list` tells.
    #[error(
        "commit {key} exists but could not be read back ({detail}); whether this backup was committed is unknown: check with `thinarc list`"
    )]
    CommitUnknown { key: String, detail: String },
    /// `init` found that the store ignores create-if-absent writes.
    #[error(
        "{location} ignores create-if-absent writes (a second conditional create of one key succeeded): two backups of one volume could both commit the same point and one would be silently lost; use a store that honours `If-None-Match: *`, or pass --allow-unsafe-store to accept the risk"
    )]
    NoConditionalWrites { location: String },
    /// The store answered HTTP 501 to a create-if-absent write.
    #[error(transparent)]
    ConditionalWritesUnsupported(s3http::ConditionalWritesUnsupported),
    /// Incomplete multipart uploads could not be listed or aborted.
    #[error("incomplete uploads of {location}: {detail}")]
    Uploads { location: String, detail: String },
    /// A volume name that cannot be used.
    #[error("invalid volume name {}: {reason}", crate::quote::excerpt(.name))]
    InvalidName { name: String, reason: &'static str },
    /// An operation on an encrypted repository needs key material this handle lacks
    /// (no key at all, or only a writer key where plaintext is needed).
    #[error("{action} needs {need} of encrypted repository {location}: {hint}")]
    NeedsKey {
        action: String,
        need: &'static str,
        location: String,
        hint: &'static str,
    },
    /// The key given belongs to another repository key pair.
    #[error(
        "the key given for {location} is key {given}, but the repository's key is {expected}: use a passphrase, identity or writer key of this repository"
    )]
    WrongKey {
        location: String,
        given: String,
        expected: String,
    },
}

impl RepoError {
    pub(crate) fn store(
        action: &'static str,
        key: impl ToString,
    ) -> impl FnOnce(object_store::Error) -> RepoError {
        let key = key.to_string();
        move |source| match s3http::conditional_unsupported(&source) {
            Some(u) => RepoError::ConditionalWritesUnsupported(u.clone()),
            None => RepoError::Store {
                action,
                key,
                source,
            },
        }
    }
}

/// An opened repository.
#[derive(Clone)]
pub struct Repository {
    store: Arc<dyn ObjectStore>,
    /// The same store without the upload limit of [`with_upload_limit`]: lock
    /// refreshes must never queue behind throttled archive uploads.
    ///
    /// [`with_upload_limit`]: Repository::with_upload_limit
    lock_store: Arc<dyn ObjectStore>,
    location: String,
    config: RepoConfig,
    /// The directory of a local repository (for file-system-only housekeeping).
    local_root: Option<std::path::PathBuf>,
    /// Incomplete multipart uploads, on S3.
    uploads: Option<Arc<uploads::S3Uploads>>,
    /// Volume catalogs listed through this handle and its clones (see
    /// [`catalog_listings`](Repository::catalog_listings)).
    catalog_listings: Arc<std::sync::atomic::AtomicU64>,
    /// Requests made through this handle and its clones (see
    /// [`requests`](Repository::requests)).
    requests: Arc<counting::Counters>,
    /// Key material given with [`with_keys`](Repository::with_keys) (encrypted
    /// repositories only).
    keys: Arc<Keys>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.location)
            .finish()
    }
}

impl Repository {
    /// The object store behind the repository.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The store for lock objects: never throttled.
    pub(crate) fn lock_store(&self) -> &Arc<dyn ObjectStore> {
        &self.lock_store
    }

    /// The file of object `key` in a local repository (`None` on other stores).
    pub(crate) fn local_file(&self, key: &object_store::path::Path) -> Option<std::path::PathBuf> {
        self.local_root.as_ref().map(|root| root.join(key.as_ref()))
    }

    /// Whether the repository is a directory on this machine (not an object store
    /// reached over the network).
    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    /// How many times a volume's catalog (its commit markers, archives, tombstones
    /// and set-aside markers) was listed through this handle and its clones. A
    /// command lists each volume's catalog once and passes it down; tests check it.
    pub fn catalog_listings(&self) -> u64 {
        self.catalog_listings
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The requests made through this handle and its clones so far, by kind: what a
    /// command costs on an object store (tests check it).
    pub fn requests(&self) -> RequestCounts {
        self.requests.get()
    }

    /// The location as the user gave it.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Opens the repository at `location` (a path or URL): the store, then the config.
    ///
    /// # Errors
    /// As [`open_store`] and [`Repository::open`].
    pub async fn open_location(location: &str) -> Result<Repository, RepoError> {
        let opened = open_store(location, false)?;
        let store = opened.store.clone();
        match Repository::open(store.clone(), location).await {
            Ok(repo) => Ok(Repository {
                local_root: opened.local_root,
                uploads: opened.uploads,
                ..repo
            }),
            // A missing bucket also looks like a missing config: tell them apart.
            Err(e @ RepoError::NotARepository { .. }) => match location.strip_prefix("s3://") {
                Some(rest) => match store.list_with_delimiter(None).await {
                    Ok(_) => Err(e),
                    Err(err) => Err(RepoError::BadLocation {
                        location: location.to_string(),
                        detail: format!(
                            "bucket {} does not exist or is not accessible ({err})",
                            rest.split('/').next().unwrap_or_default()
                        ),
                    }),
                },
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Creates a repository at `location` (a path or URL), creating a missing local
    /// directory; with `check_conditional`, refuses a store that ignores
    /// create-if-absent; with `encryption`, an encrypted repository for that key pair.
    ///
    /// # Errors
    /// As [`open_store`] and [`Repository::create_checked`].
    pub async fn create_location(
        location: &str,
        check_conditional: bool,
        encryption: Option<&WriterKey>,
    ) -> Result<Repository, RepoError> {
        let opened = open_store(location, true)?;
        let repo =
            Repository::create_checked(opened.store, location, check_conditional, encryption)
                .await?;
        Ok(Repository {
            local_root: opened.local_root,
            uploads: opened.uploads,
            ..repo
        })
    }

    /// The repository config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// Whether the repository is encrypted (its config has an `encryption` member).
    pub fn is_encrypted(&self) -> bool {
        self.config.encryption.is_some()
    }

    /// The same repository holding `keys`.
    ///
    /// # Errors
    /// [`RepoError::WrongKey`] when the keys belong to another key pair than the
    /// config's `encryption.key_id`. Keys given for an unencrypted repository are
    /// ignored.
    pub fn with_keys(self, keys: Keys) -> Result<Repository, RepoError> {
        self.with_shared_keys(Arc::new(keys))
    }

    /// The key material this handle holds ([`Keys::Locked`] unless given).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The key that decrypts, for `action` (e.g. `"restore"`): `None` for an
    /// unencrypted repository.
    ///
    /// # Errors
    /// [`RepoError::NeedsKey`] when the repository is encrypted and this handle holds
    /// no repository key (only a writer key, or nothing).
    pub fn read_key(&self, action: &str) -> Result<Option<&RepoKey>, RepoError> {
        if !self.is_encrypted() {
            return Ok(None);
        }
        match &*self.keys {
            Keys::Owner(key) => Ok(Some(key)),
            Keys::Writer(_) => Err(self.needs_key(
                action,
                "the repository key (a writer key only encrypts)",
                "a key holder must run it, with a passphrase or identity of the repository",
            )),
            Keys::Locked => Err(self.needs_key(
                action,
                "the repository key",
                "give a passphrase (--password-file, --password-command, THINARC_PASSWORD) or an identity (--identity)",
            )),
        }
    }

    /// The key that writes archives, for `action` (e.g. `"backup"`): `None` for an
    /// unencrypted repository.
    ///
    /// # Errors
    /// [`RepoError::NeedsKey`] when the repository is encrypted and this handle holds
    /// no key at all.
    pub fn write_key(&self, action: &str) -> Result<Option<&WriterKey>, RepoError> {
        if !self.is_encrypted() {
            return Ok(None);
        }
        match &*self.keys {
            Keys::Owner(key) => Ok(Some(key.writer())),
            Keys::Writer(writer) => Ok(Some(writer)),
            Keys::Locked => Err(self.needs_key(
                action,
                "a key",
                "give a passphrase (--password-file, --password-command, THINARC_PASSWORD), an identity (--identity) or a writer key (--writer-key)",
            )),
        }
    }

    fn needs_key(&self, action: &str, need: &'static str, hint: &'static str) -> RepoError {
        RepoError::NeedsKey {
            action: action.to_string(),
            need,
            location: self.location.clone(),
            hint,
        }
    }

    /// The same repository with uploads limited to `limit`'s rate (all writers of
    /// this handle share the budget).
    /// Lock objects bypass the limit (they are tiny, and a refresh delayed behind
    /// throttled uploads would let the lock go stale).
    pub fn with_upload_limit(self, limit: Arc<crate::throttle::RateLimiter>) -> Repository {
        Repository {
            store: Arc::new(crate::throttle::ThrottledStore::new(self.store, limit)),
            ..self
        }
    }
}
