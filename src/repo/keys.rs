//! Key slots of an encrypted repository (FORMAT.md 15.3): objects `keys/<slot id>.json`,
//! each wrapping one copy of the repository key ([`RepoKey::to_secret_bytes`]) under a
//! passphrase (Argon2id, then XChaCha20-Poly1305) or to an age X25519 recipient. Adding
//! or removing a slot rewrites no archive. Also the writer key file that
//! `key export-writer` writes and backup hosts read.
//!
//! Unlocking tries the passphrase on every passphrase slot and the identities on every
//! recipient slot; a slot object that cannot be parsed is reported by name and
//! skipped, so that the other slots still open the repository.

use std::str::FromStr;
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{RepoError, Repository};
use crate::format::{DigestKey, KeyId, Keys, RepoKey, WriterKey};

/// Prefix of the key slot objects.
const KEYS_PREFIX: &str = "keys";

/// Prefix holding the key slots (FORMAT.md 15.3).
pub(crate) fn keys_prefix() -> Path {
    Path::from(KEYS_PREFIX)
}
/// AAD domain of a passphrase slot's ciphertext.
const SLOT_AAD_DOMAIN: &[u8] = b"thinarc-slot-v1";
/// Argon2id memory of a new passphrase slot, KiB (64 MiB: the one exception to the
/// 64 MiB memory goal, for the moment of unlocking).
pub const ARGON2_M_COST: u32 = 64 * 1024;
/// Argon2id passes of a new passphrase slot.
pub const ARGON2_T_COST: u32 = 3;
/// Argon2id lanes of a new passphrase slot.
pub const ARGON2_P_COST: u32 = 1;
/// Largest slot object read (a slot is well under 1 KiB).
const MAX_SLOT_BYTES: usize = 16 << 10;
/// Largest Argon2id memory a slot may ask for, KiB (4 GiB): a bigger one is corrupt,
/// not a reason to exhaust the host's memory.
const MAX_M_COST: u32 = 4 << 20;
/// Most Argon2id passes and lanes a slot may ask for: far above what `key add`
/// writes (3 and 1), low enough that a tampered slot cannot hang every unlock.
const MAX_T_COST: u32 = 64;
const MAX_P_COST: u32 = 64;

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A key command on a repository that has no keys.
    #[error(
        "{location} is not encrypted: key slots belong to encrypted repositories (`thinarc init` creates one)"
    )]
    NotEncrypted { location: String },
    /// The passphrase opens no passphrase slot (`skipped`: the corrupt slots, if any).
    #[error(
        "wrong passphrase for {location} (tried {tried} passphrase slots; `thinarc key list` shows them){skipped}"
    )]
    WrongPassphrase {
        location: String,
        tried: usize,
        skipped: String,
    },
    /// No slot of the kind the key material needs could be tried: none exists, or every
    /// one is corrupt (`skipped`).
    #[error(
        "{location} has no usable {kind} slot to try{skipped}: unlock with another kind of key, or put back a slot object from a copy of keys/"
    )]
    NoUsableSlot {
        location: String,
        kind: &'static str,
        skipped: String,
    },
    /// The identities open no recipient slot (`skipped`: the corrupt slots, if any).
    #[error(
        "the identity given opens none of the {tried} recipient slots of {location} (`thinarc key list` shows their recipients){skipped}"
    )]
    WrongIdentity {
        location: String,
        tried: usize,
        skipped: String,
    },
    /// A slot object that cannot be used (reported, and skipped when unlocking).
    #[error(
        "key slot {key} of {location} is corrupt: {detail} (remove it with `thinarc key remove`)"
    )]
    CorruptSlot {
        location: String,
        key: String,
        detail: String,
    },
    /// No slot of that id.
    #[error("{location} has no key slot {id} (`thinarc key list` shows them)")]
    SlotNotFound { location: String, id: String },
    /// Removing the last slot would leave no way to decrypt.
    #[error(
        "key slot {id} is the last slot of {location} that can decrypt it: add another (`thinarc key add`) before removing it"
    )]
    LastSlot { location: String, id: String },
    /// A file of key material (writer key, identity) that cannot be used.
    #[error("{what} {path}: {detail}")]
    BadKeyFile {
        what: &'static str,
        path: String,
        detail: String,
    },
    /// A source of key material (password file or command) failed.
    #[error("{what}: {detail}")]
    Source { what: String, detail: String },
    /// The recipient of `key add --recipient` or `init --recipient` is not one.
    #[error("{given} is not an age X25519 recipient (age1…)")]
    BadRecipient { given: String },
    /// A passphrase that cannot be used.
    #[error("{0}")]
    BadPassphrase(&'static str),
    /// A new passphrase that a passphrase slot already opens with.
    #[error(
        "the new passphrase already opens key slot {id} of {location}: choose another passphrase (`thinarc key list` shows the slots)"
    )]
    PassphraseInUse { location: String, id: String },
    /// The writer key file exists.
    #[error("{path} exists: give another file (a writer key is never overwritten)")]
    Exists { path: String },
}

/// What a slot wraps the repository key with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotKind {
    /// A passphrase, through Argon2id and XChaCha20-Poly1305.
    Passphrase,
    /// An age X25519 recipient.
    Recipient,
}

impl std::fmt::Display for SlotKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SlotKind::Passphrase => "passphrase",
            SlotKind::Recipient => "recipient",
        })
    }
}

/// Argon2id parameters of a passphrase slot, as used when it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kdf {
    /// Always `"argon2id"`.
    pub algorithm: String,
    /// Argon2 version (19 = 0x13).
    pub version: u32,
    /// Memory, KiB.
    pub m_cost: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
    /// 16 random bytes, hex.
    pub salt: String,
}

/// A key slot object, `keys/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySlot {
    /// What wraps the key.
    pub kind: SlotKind,
    /// The slot id, 16 hex digits (its object name).
    pub id: String,
    /// The id of the key pair it wraps (the config's `encryption.key_id`).
    pub key_id: String,
    /// Creation time, RFC 3339.
    pub created: String,
    /// A note given by `key add --label`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Passphrase slots: the key derivation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdf: Option<Kdf>,
    /// Passphrase slots: the XChaCha20-Poly1305 nonce, 24 bytes hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Recipient slots: the `age1…` recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// The wrapped key, hex: the AEAD ciphertext and tag (passphrase), or the age
    /// binary file (recipient).
    pub ciphertext: String,
}

/// The slots of a repository as listed: the usable ones, and the problems of the
/// others (each a [`KeyError::CorruptSlot`]).
#[derive(Debug, Default)]
pub struct Slots {
    /// Parsed slots, by id.
    pub slots: Vec<KeySlot>,
    /// Slot objects that cannot be used.
    pub problems: Vec<KeyError>,
    /// Of those, the slots that wrap another key than the config names: each object
    /// name and the key id it names.
    pub other_key: Vec<(String, String)>,
}

/// The key unlocked by [`Repository::unlock`], the slot that opened it, and the slots
/// skipped as corrupt.
#[derive(Debug)]
pub struct Unlocked {
    /// The repository key.
    pub key: RepoKey,
    /// The id of the slot that opened it.
    pub slot: String,
    /// Slots that could not be used (each a [`KeyError::CorruptSlot`]).
    pub problems: Vec<KeyError>,
}

/// Key material tried on the slots.
#[derive(Default)]
pub struct Secrets {
    /// A passphrase, tried on every passphrase slot.
    pub passphrase: Option<Zeroizing<String>>,
    /// age identities, tried on every recipient slot.
    pub identities: Vec<age::x25519::Identity>,
}

impl Secrets {
    /// Whether there is anything to try.
    pub fn is_empty(&self) -> bool {
        self.passphrase.is_none() && self.identities.is_empty()
    }
}

impl Repository {
    /// [`with_keys`](Self::with_keys) with keys shared by several handles (a job
    /// unlocks once and opens the repository for each operation).
    ///
    /// # Errors
    /// [`RepoError::WrongKey`] as [`with_keys`](Self::with_keys).
    pub fn with_shared_keys(self, keys: Arc<Keys>) -> Result<Repository, RepoError> {
        let Some(enc) = &self.config.encryption else {
            return Ok(self);
        };
        if let Some(given) = keys.key_id()
            && given.to_string() != enc.key_id
        {
            return Err(RepoError::WrongKey {
                location: self.location.clone(),
                given: given.to_string(),
                expected: enc.key_id.clone(),
            });
        }
        Ok(Repository { keys, ..self })
    }

    /// The keys this handle holds, to share with [`with_shared_keys`](Self::with_shared_keys).
    pub fn shared_keys(&self) -> Arc<Keys> {
        self.keys.clone()
    }

    /// The config's key id, or [`KeyError::NotEncrypted`].
    fn encrypted_key_id(&self) -> Result<&str, KeyError> {
        match &self.config.encryption {
            Some(e) => Ok(&e.key_id),
            None => Err(KeyError::NotEncrypted {
                location: self.location.clone(),
            }),
        }
    }

    /// The key slots, sorted by creation time then id; an object that is not a slot of
    /// this repository's key is a problem, not an error.
    ///
    /// # Errors
    /// [`KeyError::NotEncrypted`], or [`KeyError::Repo`] when the store fails.
    pub async fn key_slots(&self) -> Result<Slots, KeyError> {
        let key_id = self.encrypted_key_id()?.to_string();
        let prefix = Path::from(KEYS_PREFIX);
        let objects: Vec<_> =
            self.store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(RepoError::store(
                    "list",
                    format!("{}/{KEYS_PREFIX}", self.location),
                ))?;
        let mut out = Slots::default();
        for meta in objects {
            let name = meta.location.to_string();
            let corrupt = |detail: String| KeyError::CorruptSlot {
                location: self.location.clone(),
                key: name.clone(),
                detail,
            };
            if meta.size > MAX_SLOT_BYTES as u64 {
                out.problems
                    .push(corrupt(format!("it is {} bytes", meta.size)));
                continue;
            }
            let bytes = self
                .store
                .get(&meta.location)
                .await
                .map_err(RepoError::store("read", &name))?
                .bytes()
                .await
                .map_err(RepoError::store("read", &name))?;
            let parsed = serde_json::from_slice::<KeySlot>(&bytes);
            if let Ok(slot) = &parsed
                && slot.key_id != key_id
            {
                out.other_key.push((name.clone(), slot.key_id.clone()));
            }
            match parsed
                .map_err(|e| e.to_string())
                .and_then(|s| s.check(meta.location.filename(), &key_id).map(|()| s))
            {
                Ok(slot) => out.slots.push(slot),
                Err(detail) => out.problems.push(corrupt(detail)),
            }
        }
        out.slots
            .sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        Ok(out)
    }

    /// Opens the repository key with `secrets`: the passphrase on every passphrase
    /// slot, the identities on every recipient slot. Argon2id runs on a blocking
    /// thread.
    ///
    /// # Errors
    /// [`KeyError::WrongPassphrase`] (a passphrase was given) or
    /// [`KeyError::WrongIdentity`] when no slot opens; as [`key_slots`](Self::key_slots).
    pub async fn unlock(&self, secrets: Secrets) -> Result<Unlocked, KeyError> {
        let Slots {
            slots,
            mut problems,
            ..
        } = self.key_slots().await?;
        let repo_id = self.config.id.clone();
        let location = self.location.clone();
        let key_id = self.encrypted_key_id()?.to_string();
        let tried = |kind| slots.iter().filter(|s| s.kind == kind).count();
        let (passphrases, recipients) = (tried(SlotKind::Passphrase), tried(SlotKind::Recipient));
        let has_passphrase = secrets.passphrase.is_some();
        let opened = tokio::task::spawn_blocking(move || {
            let mut found = None;
            let mut problems = Vec::new();
            for slot in &slots {
                let secret = match (slot.kind, &secrets.passphrase) {
                    (SlotKind::Passphrase, Some(p)) => slot.open_passphrase(&repo_id, p.as_bytes()),
                    (SlotKind::Recipient, _) if !secrets.identities.is_empty() => {
                        slot.open_recipient(&secrets.identities)
                    }
                    _ => continue,
                };
                let Some(secret) = secret else { continue };
                match RepoKey::from_secret_bytes(&secret) {
                    Ok(key) if key.key_id().to_string() == key_id => {
                        found = Some((key, slot.id.clone()));
                        break;
                    }
                    Ok(key) => problems.push(format!(
                        "{}: it opens key {}, not the repository's",
                        slot.id,
                        key.key_id()
                    )),
                    Err(e) => problems.push(format!("{}: {e}", slot.id)),
                }
            }
            (found, problems)
        })
        .await
        .expect("the unlock thread does not panic");
        let (found, bad) = opened;
        problems.extend(bad.into_iter().map(|detail| {
            let (id, detail) = detail.split_once(": ").expect("id: detail");
            KeyError::CorruptSlot {
                location: location.clone(),
                key: slot_key(id).to_string(),
                detail: detail.to_string(),
            }
        }));
        let skipped = || match problems.len() {
            0 => String::new(),
            _ => format!(
                "; skipped: {}",
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        };
        match found {
            Some((key, slot)) => Ok(Unlocked {
                key,
                slot,
                problems,
            }),
            None if (has_passphrase && passphrases == 0)
                || (!has_passphrase && recipients == 0) =>
            {
                Err(KeyError::NoUsableSlot {
                    skipped: skipped(),
                    location,
                    kind: if has_passphrase {
                        "passphrase"
                    } else {
                        "recipient"
                    },
                })
            }
            None if has_passphrase => Err(KeyError::WrongPassphrase {
                skipped: skipped(),
                location,
                tried: passphrases,
            }),
            None => Err(KeyError::WrongIdentity {
                skipped: skipped(),
                location,
                tried: recipients,
            }),
        }
    }

    /// Adds a passphrase slot for `key` (Argon2id with the default parameters, on a
    /// blocking thread), unless a passphrase slot already opens with `passphrase`
    /// (each is tried first, as an unlock would: a second slot of one passphrase adds
    /// no way in, and removing one would not revoke it).
    ///
    /// # Errors
    /// [`KeyError::BadPassphrase`] for an empty passphrase;
    /// [`KeyError::PassphraseInUse`]; [`KeyError::Repo`] when the slots cannot be
    /// listed or the slot cannot be written.
    pub async fn add_passphrase_slot(
        &self,
        key: &RepoKey,
        passphrase: Zeroizing<String>,
        label: Option<String>,
    ) -> Result<KeySlot, KeyError> {
        if passphrase.is_empty() {
            return Err(KeyError::BadPassphrase("the passphrase is empty"));
        }
        let existing: Vec<KeySlot> = self
            .key_slots()
            .await?
            .slots
            .into_iter()
            .filter(|s| s.kind == SlotKind::Passphrase)
            .collect();
        let mut slot = KeySlot::new(SlotKind::Passphrase, key, label);
        let secret = key.to_secret_bytes();
        let repo_id = self.config.id.clone();
        let sealed = tokio::task::spawn_blocking(move || {
            if let Some(s) = existing
                .iter()
                .find(|s| s.open_passphrase(&repo_id, passphrase.as_bytes()).is_some())
            {
                return Err(s.id.clone());
            }
            slot.seal_passphrase(&repo_id, passphrase.as_bytes(), &secret);
            Ok(slot)
        })
        .await
        .expect("the key derivation thread does not panic");
        match sealed {
            Ok(slot) => self.write_slot(slot).await,
            Err(id) => Err(KeyError::PassphraseInUse {
                location: self.location.clone(),
                id,
            }),
        }
    }

    /// Adds a slot that `recipient`'s identity opens.
    ///
    /// # Errors
    /// [`KeyError::Repo`] when the slot cannot be written.
    pub async fn add_recipient_slot(
        &self,
        key: &RepoKey,
        recipient: &age::x25519::Recipient,
        label: Option<String>,
    ) -> Result<KeySlot, KeyError> {
        let mut slot = KeySlot::new(SlotKind::Recipient, key, label);
        let wrapped = age::encrypt(recipient, &key.to_secret_bytes())
            .expect("encrypting to an X25519 recipient does not fail");
        slot.recipient = Some(recipient.to_string());
        slot.ciphertext = hex::encode(wrapped);
        self.write_slot(slot).await
    }

    async fn write_slot(&self, slot: KeySlot) -> Result<KeySlot, KeyError> {
        self.encrypted_key_id()?;
        let key = slot_key(&slot.id);
        let body = serde_json::to_vec_pretty(&slot).expect("a slot serialises");
        self.put_create(&key, PutPayload::from(body))
            .await
            .map_err(RepoError::store(
                "write",
                format!("{}/{key}", self.location),
            ))?;
        Ok(slot)
    }

    /// Removes slot `id`, unless it is the last usable slot; `None` when the object
    /// removed was a corrupt one (it opened nothing, so removing it is always safe).
    ///
    /// # Errors
    /// [`KeyError::SlotNotFound`], [`KeyError::LastSlot`], or [`KeyError::Repo`] when
    /// the store fails.
    pub async fn remove_slot(&self, id: &str) -> Result<Option<KeySlot>, KeyError> {
        let Slots {
            slots, problems, ..
        } = self.key_slots().await?;
        let object = slot_key(id).to_string();
        let slot = slots.iter().find(|s| s.id == id);
        match slot {
            Some(_) if slots.len() == 1 => {
                return Err(KeyError::LastSlot {
                    location: self.location.clone(),
                    id: id.to_string(),
                });
            }
            Some(_) => {}
            None if problems
                .iter()
                .any(|p| matches!(p, KeyError::CorruptSlot { key, .. } if *key == object)) => {}
            None => {
                return Err(KeyError::SlotNotFound {
                    location: self.location.clone(),
                    id: id.to_string(),
                });
            }
        }
        self.store
            .delete(&slot_key(id))
            .await
            .map_err(RepoError::store(
                "delete",
                format!("{}/{object}", self.location),
            ))?;
        Ok(slot.cloned())
    }

    /// Creates a repository at `location` encrypted with this repository's key (a
    /// copy's new destination: archives copy as they are): its slots are this
    /// repository's recipient slots and, with `passphrase`, a passphrase slot.
    ///
    /// # Errors
    /// [`RepoError::NeedsKey`] (in [`KeyError::Repo`]) without the repository key;
    /// [`KeyError::BadPassphrase`] when there would be no slot; as
    /// [`Repository::create_location`].
    pub async fn create_sharing_key(
        &self,
        location: &str,
        passphrase: Option<Zeroizing<String>>,
    ) -> Result<Repository, KeyError> {
        let key = self
            .read_key("copy")?
            .ok_or_else(|| KeyError::NotEncrypted {
                location: self.location.clone(),
            })?;
        let recipients: Vec<KeySlot> = self
            .key_slots()
            .await?
            .slots
            .into_iter()
            .filter(|s| s.kind == SlotKind::Recipient)
            .collect();
        if recipients.is_empty() && passphrase.is_none() {
            return Err(KeyError::BadPassphrase(
                "a new destination of an encrypted repository gets its key slots from the passphrase or recipient slots of the source: unlock the source with a passphrase, or add a recipient slot to it",
            ));
        }
        let check = !self.config.unsafe_store;
        let dest = Repository::create_location(location, check, Some(key.writer())).await?;
        for slot in recipients {
            let recipient = slot.recipient.as_deref().unwrap_or_default();
            dest.add_recipient_slot(key, &parse_recipient(recipient)?, slot.label)
                .await?;
        }
        if let Some(p) = passphrase {
            let label = format!("copied from {}", self.config.id);
            dest.add_passphrase_slot(key, p, Some(label)).await?;
        }
        Ok(dest)
    }

    /// The writer key file for this repository's `key` (see [`WriterKeyFile`]).
    ///
    /// # Errors
    /// [`KeyError::NotEncrypted`].
    pub fn writer_key_file(&self, key: &WriterKey) -> Result<String, KeyError> {
        self.encrypted_key_id()?;
        Ok(WriterKeyFile {
            repository: self.config.id.clone(),
            key: key.clone(),
        }
        .render())
    }
}

/// The object key of slot `id`.
fn slot_key(id: &str) -> Path {
    Path::from(format!("{KEYS_PREFIX}/{id}.json"))
}

impl KeySlot {
    fn new(kind: SlotKind, key: &RepoKey, label: Option<String>) -> KeySlot {
        KeySlot {
            kind,
            id: hex::encode(random::<8>()),
            key_id: key.key_id().to_string(),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            label,
            kdf: None,
            nonce: None,
            recipient: None,
            ciphertext: String::new(),
        }
    }

    /// Checks what parsing cannot: the id matches the object name, the slot wraps the
    /// repository's key pair, and the kind's fields are present and well-formed.
    fn check(&self, file: Option<&str>, key_id: &str) -> Result<(), String> {
        if file != Some(&format!("{}.json", self.id)) || !is_hex(&self.id, 8) {
            return Err(format!(
                "slot id {:?} does not match its object name",
                self.id
            ));
        }
        if self.key_id != key_id {
            return Err(format!(
                "it wraps key {}, but the repository config names key {key_id} (the slot comes from another repository, or `config` is damaged: compare it with a copy before removing any slot)",
                self.key_id
            ));
        }
        if hex::decode(&self.ciphertext).is_err() {
            return Err("ciphertext is not hex".into());
        }
        match self.kind {
            SlotKind::Passphrase => {
                let kdf = self.kdf.as_ref().ok_or("passphrase slot without kdf")?;
                if kdf.algorithm != "argon2id" || kdf.version != 19 {
                    return Err(format!(
                        "kdf {} version {} is not argon2id version 19",
                        kdf.algorithm, kdf.version
                    ));
                }
                if kdf.m_cost > MAX_M_COST
                    || !(1..=MAX_T_COST).contains(&kdf.t_cost)
                    || !(1..=MAX_P_COST).contains(&kdf.p_cost)
                {
                    return Err(format!(
                        "kdf parameters m_cost {} t_cost {} p_cost {} are out of range",
                        kdf.m_cost, kdf.t_cost, kdf.p_cost
                    ));
                }
                if !is_hex(&kdf.salt, 16) {
                    return Err("kdf salt is not 16 bytes of hex".into());
                }
                if !self.nonce.as_deref().is_some_and(|n| is_hex(n, 24)) {
                    return Err("nonce is not 24 bytes of hex".into());
                }
                if self.recipient.is_some() {
                    return Err("passphrase slot with a recipient".into());
                }
            }
            SlotKind::Recipient => {
                let r = self
                    .recipient
                    .as_deref()
                    .ok_or("recipient slot without recipient")?;
                age::x25519::Recipient::from_str(r)
                    .map_err(|_| format!("{r:?} is not an age X25519 recipient"))?;
                if self.kdf.is_some() || self.nonce.is_some() {
                    return Err("recipient slot with passphrase fields".into());
                }
            }
        }
        Ok(())
    }

    /// `"thinarc-slot-v1" || repository id || slot id || key id`.
    fn aad(&self, repo_id: &str) -> Vec<u8> {
        [
            SLOT_AAD_DOMAIN,
            repo_id.as_bytes(),
            self.id.as_bytes(),
            self.key_id.as_bytes(),
        ]
        .concat()
    }

    /// Fills the passphrase fields: a fresh salt and nonce, the default Argon2id
    /// parameters, and the sealed `secret`.
    fn seal_passphrase(&mut self, repo_id: &str, passphrase: &[u8], secret: &[u8]) {
        let kdf = Kdf {
            algorithm: "argon2id".into(),
            version: 19,
            m_cost: ARGON2_M_COST,
            t_cost: ARGON2_T_COST,
            p_cost: ARGON2_P_COST,
            salt: hex::encode(random::<16>()),
        };
        let nonce = random::<24>();
        let wrapping = derive(&kdf, passphrase).expect("the default parameters are valid");
        let sealed = XChaCha20Poly1305::new(wrapping.as_ref().into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret,
                    aad: &self.aad(repo_id),
                },
            )
            .expect("sealing a short message does not fail");
        self.kdf = Some(kdf);
        self.nonce = Some(hex::encode(nonce));
        self.ciphertext = hex::encode(sealed);
    }

    /// The secret under `passphrase`, or `None` when it does not open (a wrong
    /// passphrase and a damaged ciphertext look the same).
    fn open_passphrase(&self, repo_id: &str, passphrase: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let kdf = self.kdf.as_ref()?;
        let nonce = hex::decode(self.nonce.as_deref()?).ok()?;
        let sealed = hex::decode(&self.ciphertext).ok()?;
        let wrapping = derive(kdf, passphrase)?;
        XChaCha20Poly1305::new(wrapping.as_ref().into())
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &sealed,
                    aad: &self.aad(repo_id),
                },
            )
            .ok()
            .map(Zeroizing::new)
    }

    /// The secret under one of `identities`, or `None`.
    fn open_recipient(&self, identities: &[age::x25519::Identity]) -> Option<Zeroizing<Vec<u8>>> {
        let wrapped = hex::decode(&self.ciphertext).ok()?;
        identities
            .iter()
            .find_map(|id| age::decrypt(id, &wrapped).ok())
            .map(Zeroizing::new)
    }
}

/// The 32-byte wrapping key of a passphrase slot, or `None` for parameters Argon2
/// refuses.
fn derive(kdf: &Kdf, passphrase: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let params = argon2::Params::new(kdf.m_cost, kdf.t_cost, kdf.p_cost, Some(32)).ok()?;
    let salt = hex::decode(&kdf.salt).ok()?;
    let mut out = Zeroizing::new([0u8; 32]);
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(passphrase, &salt, out.as_mut())
        .ok()?;
    Some(out)
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source works");
    b
}

fn is_hex(s: &str, bytes: usize) -> bool {
    s.len() == 2 * bytes
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// Parses an `age1…` recipient.
///
/// # Errors
/// [`KeyError::BadRecipient`].
pub fn parse_recipient(given: &str) -> Result<age::x25519::Recipient, KeyError> {
    age::x25519::Recipient::from_str(given).map_err(|_| KeyError::BadRecipient {
        given: crate::quote::excerpt(given),
    })
}

/// Parses an age identity file (`AGE-SECRET-KEY-1…` lines; `#` comments and blank
/// lines ignored) read from `path`.
///
/// # Errors
/// [`KeyError::BadKeyFile`] when a line is not an X25519 identity or there is none.
pub fn parse_identities(path: &str, text: &str) -> Result<Vec<age::x25519::Identity>, KeyError> {
    let bad = |detail: String| KeyError::BadKeyFile {
        what: "identity file",
        path: path.to_string(),
        detail,
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(age::x25519::Identity::from_str(line).map_err(|_| {
            bad(format!(
                "line {} is not an age X25519 identity (AGE-SECRET-KEY-1…)",
                n + 1
            ))
        })?);
    }
    if out.is_empty() {
        return Err(bad("holds no identity".into()));
    }
    Ok(out)
}

/// A writer key file: what a write-only host needs (FORMAT.md 15.4). Text, `name =
/// value` lines after a comment header.
pub struct WriterKeyFile {
    /// The id of the repository it was exported from.
    pub repository: String,
    /// The recipient and digest key.
    pub key: WriterKey,
}

impl WriterKeyFile {
    /// The file's text.
    pub fn render(&self) -> String {
        format!(
            "# thinarc writer key of repository {repo}\n\
             # It lets a host write backups to the repository; it cannot decrypt them, so it\n\
             # cannot restore, verify data, prune or consolidate. Keep it secret all the same:\n\
             # its holder can add points and test guesses of content against stored digests.\n\
             repository = {repo}\n\
             key_id = {key_id}\n\
             recipient = {recipient}\n\
             digest_key = {digest}\n",
            repo = self.repository,
            key_id = self.key.key_id(),
            recipient = self.key.recipient,
            digest = hex::encode(self.key.digest_key.as_bytes()),
        )
    }

    /// Parses a writer key file read from `path`.
    ///
    /// # Errors
    /// [`KeyError::BadKeyFile`] naming the problem.
    pub fn parse(path: &str, text: &str) -> Result<WriterKeyFile, KeyError> {
        let bad = |detail: String| KeyError::BadKeyFile {
            what: "writer key file",
            path: path.to_string(),
            detail,
        };
        let mut fields = std::collections::BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("line {} is not `name = value`", n + 1)))?;
            fields.insert(name.trim().to_string(), value.trim().to_string());
        }
        let field = |name: &str| {
            fields
                .get(name)
                .ok_or_else(|| bad(format!("no {name} line")))
        };
        let recipient = age::x25519::Recipient::from_str(field("recipient")?)
            .map_err(|_| bad("recipient is not an age X25519 recipient".into()))?;
        let mut digest = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(field("digest_key")?, &mut digest[..])
            .map_err(|_| bad("digest_key is not 64 hex digits".into()))?;
        let key = WriterKey {
            recipient,
            digest_key: DigestKey::from_bytes(*digest),
        };
        let key_id = KeyId::from_str(field("key_id")?).map_err(|e| bad(e.to_string()))?;
        if key_id != key.key_id() {
            return Err(bad(format!(
                "key_id {key_id} is not the id of its recipient ({})",
                key.key_id()
            )));
        }
        Ok(WriterKeyFile {
            repository: field("repository")?.clone(),
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passphrase_slot_opens_with_its_passphrase_only() {
        let key = RepoKey::generate();
        let mut slot = KeySlot::new(SlotKind::Passphrase, &key, None);
        slot.seal_passphrase("repo1", b"correct horse", &key.to_secret_bytes());
        slot.check(
            Some(&format!("{}.json", slot.id)),
            &key.key_id().to_string(),
        )
        .unwrap();
        let secret = slot.open_passphrase("repo1", b"correct horse").unwrap();
        assert_eq!(
            RepoKey::from_secret_bytes(&secret).unwrap().key_id(),
            key.key_id()
        );
        assert!(slot.open_passphrase("repo1", b"wrong").is_none());
        // Bound to its repository: the same object under another repository id fails.
        assert!(slot.open_passphrase("repo2", b"correct horse").is_none());
    }

    #[test]
    fn a_writer_key_file_round_trips_and_checks_its_key_id() {
        let key = RepoKey::generate();
        let file = WriterKeyFile {
            repository: "r1".into(),
            key: key.writer().clone(),
        };
        let text = file.render();
        let again = WriterKeyFile::parse("w", &text).unwrap();
        assert_eq!(again.repository, "r1");
        assert_eq!(again.key.key_id(), key.key_id());
        assert_eq!(again.key.digest_key, key.writer().digest_key);
        let other = RepoKey::generate().key_id().to_string();
        let forged = text.replace(&key.key_id().to_string(), &other);
        assert!(WriterKeyFile::parse("w", &forged).is_err());
    }
}
