//! The repository config object, written once by `init`.

use std::sync::Arc;

use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use super::{RepoError, Repository, layout, new_id};
use crate::format::{ENCRYPTION_SCHEME, WriterKey};

const KIND: &str = "thinarc-repository";
/// Layout version of an unencrypted repository.
const VERSION: u32 = 1;
/// Layout version of an encrypted repository (FORMAT.md section 18): builds that
/// predate encryption refuse it by version.
const VERSION_ENCRYPTED: u32 = 2;

/// Contents of the `config` object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Always `"thinarc-repository"`.
    pub kind: String,
    /// Repository layout version (1).
    pub version: u32,
    /// Random repository id.
    pub id: String,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Created with `init --allow-unsafe-store` on a store that may not implement
    /// create-if-absent: where it answers HTTP 501, writers fall back to a HEAD check
    /// and an unconditional put (safe only with one writer per volume at a time).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unsafe_store: bool,
    /// Present in an encrypted repository (version 2), absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
}

/// The `encryption` member of an encrypted repository's config (FORMAT.md section 18).
/// Informational for key holders (they derive the recipient from the key) and a
/// cross-check for writers: a writer key for another key id is refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EncryptionConfig {
    /// [`ENCRYPTION_SCHEME`](crate::format::ENCRYPTION_SCHEME).
    pub scheme: String,
    /// The repository key pair's id, 32 hex digits.
    pub key_id: String,
    /// The repository's public key, `age1…`.
    pub recipient: String,
}

impl Repository {
    /// Creates a repository: proves the store honours create-if-absent, then writes
    /// the config object with create-if-absent.
    ///
    /// # Errors
    /// [`RepoError::AlreadyInitialized`] if a config exists, [`RepoError::Store`] if the
    /// store cannot be written.
    pub async fn create(
        store: Arc<dyn ObjectStore>,
        location: &str,
    ) -> Result<Repository, RepoError> {
        Self::create_checked(store, location, true, None).await
    }

    /// Like [`create`](Self::create); with `check_conditional`, first proves that the
    /// store honours create-if-absent (commits depend on it). With `encryption`, the
    /// repository is encrypted (config version 2, FORMAT.md section 18) for that key
    /// pair; its key slots are written by the caller.
    ///
    /// # Errors
    /// [`RepoError::NoConditionalWrites`] if it does not, and what
    /// [`create`](Self::create) returns.
    pub async fn create_checked(
        store: Arc<dyn ObjectStore>,
        location: &str,
        check_conditional: bool,
        encryption: Option<&WriterKey>,
    ) -> Result<Repository, RepoError> {
        if check_conditional {
            check_create_if_absent(&store, location).await?;
        }
        let encryption = encryption.map(|key| EncryptionConfig {
            scheme: ENCRYPTION_SCHEME.to_string(),
            key_id: key.key_id().to_string(),
            recipient: key.recipient.to_string(),
        });
        let config = RepoConfig {
            kind: KIND.into(),
            version: if encryption.is_some() {
                VERSION_ENCRYPTED
            } else {
                VERSION
            },
            id: new_id(),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            unsafe_store: !check_conditional,
            encryption,
        };
        let body = serde_json::to_vec_pretty(&config).expect("config serialises");
        let repo = Repository::with_config(store, location, config);
        match repo
            .put_create(&layout::config_key(), PutPayload::from(body))
            .await
        {
            Ok(_) => Ok(repo),
            Err(object_store::Error::AlreadyExists { .. }) => Err(RepoError::AlreadyInitialized {
                location: location.to_string(),
            }),
            Err(e) => Err(RepoError::store("write", format!("{location}/config"))(e)),
        }
    }

    /// Opens an existing repository by reading and checking its config.
    ///
    /// # Errors
    /// [`RepoError::NotARepository`] when there is no config,
    /// [`RepoError::NotThinarc`] when the config is something else,
    /// [`RepoError::Store`] when the store fails.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        location: &str,
    ) -> Result<Repository, RepoError> {
        let not_thinarc = |detail: String| RepoError::NotThinarc {
            location: location.to_string(),
            detail,
        };
        let bytes = match store.get(&layout::config_key()).await {
            Ok(r) => r
                .bytes()
                .await
                .map_err(RepoError::store("read", format!("{location}/config")))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(RepoError::NotARepository {
                    location: location.to_string(),
                });
            }
            Err(e) => return Err(RepoError::store("read", format!("{location}/config"))(e)),
        };
        if bytes.len() > 64 << 10 {
            return Err(not_thinarc(format!(
                "its config object is {} bytes",
                bytes.len()
            )));
        }
        let config: RepoConfig = serde_json::from_slice(&bytes)
            .map_err(|e| not_thinarc(format!("config object: {e}")))?;
        if config.kind != KIND {
            return Err(not_thinarc(format!("config kind is {:?}", config.kind)));
        }
        let expected = match config.encryption {
            Some(_) => VERSION_ENCRYPTED,
            None => VERSION,
        };
        if config.version != expected {
            return Err(not_thinarc(format!(
                "repository version {} is not supported by this build (supports {VERSION}, and {VERSION_ENCRYPTED} with an `encryption` member)",
                config.version
            )));
        }
        Ok(Repository::with_config(store, location, config))
    }

    /// A handle on `store` holding `config`: no local root, no upload listing and no
    /// upload limit yet (the openers in `location.rs` add them).
    fn with_config(store: Arc<dyn ObjectStore>, location: &str, config: RepoConfig) -> Self {
        let requests = Arc::<super::counting::Counters>::default();
        let store: Arc<dyn ObjectStore> =
            Arc::new(super::counting::CountingStore::new(store, requests.clone()));
        Repository {
            requests,
            lock_store: store.clone(),
            store,
            location: location.to_string(),
            config,
            local_root: None,
            uploads: None,
            catalog_listings: Arc::default(),
            keys: Arc::default(),
        }
    }
}

/// Writes a probe object twice with create-if-absent: the second write must be refused.
async fn check_create_if_absent(
    store: &Arc<dyn ObjectStore>,
    location: &str,
) -> Result<(), RepoError> {
    let key = object_store::path::Path::from(format!("probe-{}", new_id()));
    let create = || {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        store.put_opts(&key, PutPayload::from_static(b"thinarc probe"), opts)
    };
    create()
        .await
        .map_err(RepoError::store("write", format!("{location}/{key}")))?;
    let second = create().await;
    let _ = store.delete(&key).await;
    match second {
        Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Ok(_) => Err(RepoError::NoConditionalWrites {
            location: location.to_string(),
        }),
        Err(e) => Err(RepoError::store("write", format!("{location}/{key}"))(e)),
    }
}
