//! Key material of an encrypted repository (FORMAT.md section 18): the repository key
//! that decrypts, the writer key that only encrypts, and the digest key that makes
//! stored digests reveal nothing about content.
//!
//! Shapes: a [`RepoKey`] is an age X25519 identity (its public half is the
//! repository's *recipient*, to which every archive's data key is wrapped) and a
//! 32-byte [`DigestKey`]. A [`WriterKey`] is the recipient and the digest key: enough
//! to write archives, not to read one. The [`KeyId`] names the key pair in headers and
//! in the repository config. No primitive here is home-made: `age` for X25519, and the
//! digest key is used with HMAC-SHA256 (`hmac`).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::FormatError;

/// The encryption scheme written in headers and the repository config.
pub const ENCRYPTION_SCHEME: &str = "age-x25519/chacha20poly1305/hmac-sha256";

/// Domain of [`KeyId`]: `sha256(KEY_ID_DOMAIN || recipient)[..16]`.
const KEY_ID_DOMAIN: &[u8] = b"thinarc-key-id-v1";

/// The repository-wide secret of keyed digests (HMAC-SHA256 key, 32 bytes). A writer
/// holds it: it does not decrypt anything, but with it stored digests can be tested
/// against guessed content (FORMAT.md, threat model).
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct DigestKey([u8; 32]);

impl DigestKey {
    /// A fresh random key.
    pub fn generate() -> DigestKey {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).expect("the OS random source works");
        DigestKey(k)
    }

    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> DigestKey {
        DigestKey(bytes)
    }
}

impl fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DigestKey(..)")
    }
}

/// Id of a repository key pair: the first 16 bytes of
/// `sha256("thinarc-key-id-v1" || recipient)`, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    /// The id of the key pair whose public half is `recipient`.
    pub fn of(recipient: &age::x25519::Recipient) -> KeyId {
        let mut h = Sha256::new();
        h.update(KEY_ID_DOMAIN);
        h.update(recipient.to_string().as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.finalize()[..16]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = FormatError;

    /// Parses 32 hex digits.
    fn from_str(s: &str) -> Result<KeyId, FormatError> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(s, &mut id).map_err(|e| {
            FormatError::corrupt("key id", format!("{s:?} is not 32 hex digits: {e}"))
        })?;
        Ok(KeyId(id))
    }
}

/// What a writer needs to write archives of an encrypted repository: the
/// repository's public recipient (data keys are wrapped to it) and the digest key.
/// It cannot decrypt anything.
#[derive(Clone, Debug)]
pub struct WriterKey {
    /// The repository's public key.
    pub recipient: age::x25519::Recipient,
    /// The keyed-digest secret.
    pub digest_key: DigestKey,
}

impl WriterKey {
    /// The id of the key pair this writer encrypts to.
    pub fn key_id(&self) -> KeyId {
        KeyId::of(&self.recipient)
    }
}

/// The repository key: decrypts every archive of the repository, and writes them.
/// Key slots (passphrases, age recipients) each wrap one copy of it; removing a slot
/// rewrites no archive.
pub struct RepoKey {
    identity: age::x25519::Identity,
    writer: WriterKey,
}

impl RepoKey {
    /// A fresh random repository key.
    pub fn generate() -> RepoKey {
        RepoKey::from_parts(age::x25519::Identity::generate(), DigestKey::generate())
    }

    fn from_parts(identity: age::x25519::Identity, digest_key: DigestKey) -> RepoKey {
        let writer = WriterKey {
            recipient: identity.to_public(),
            digest_key,
        };
        RepoKey { identity, writer }
    }

    /// The age identity that unwraps data keys.
    pub fn identity(&self) -> &age::x25519::Identity {
        &self.identity
    }

    /// The writer's half: recipient and digest key.
    pub fn writer(&self) -> &WriterKey {
        &self.writer
    }

    /// The id of this key pair.
    pub fn key_id(&self) -> KeyId {
        self.writer.key_id()
    }

    /// The secret as the bytes a key slot wraps: the identity's Bech32 text
    /// (`AGE-SECRET-KEY-1…`), a newline, and the digest key as 64 hex digits.
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        use age::secrecy::ExposeSecret;
        let identity = self.identity.to_string();
        let mut out = Zeroizing::new(Vec::with_capacity(140));
        out.extend_from_slice(identity.expose_secret().as_bytes());
        out.push(b'\n');
        out.extend_from_slice(hex::encode(self.writer.digest_key.as_bytes()).as_bytes());
        out
    }

    /// Parses what [`to_secret_bytes`](Self::to_secret_bytes) wrote.
    ///
    /// # Errors
    /// [`FormatError::Corrupt`] (`"repository key"`) when the bytes are not a key.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<RepoKey, FormatError> {
        let bad = |what: &str| FormatError::corrupt("repository key", what.to_string());
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let (identity, digest) = text
            .split_once('\n')
            .ok_or_else(|| bad("no digest key line"))?;
        let identity = age::x25519::Identity::from_str(identity)
            .map_err(|_| bad("not an age X25519 identity"))?;
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(digest.trim_end(), &mut key[..])
            .map_err(|_| bad("digest key is not 64 hex digits"))?;
        Ok(RepoKey::from_parts(identity, DigestKey::from_bytes(*key)))
    }
}

impl fmt::Debug for RepoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoKey({})", self.key_id())
    }
}

/// The key material a caller holds for an encrypted repository.
#[derive(Debug, Default)]
pub enum Keys {
    /// None: list, status and structural verify work; nothing that writes or
    /// decrypts archives does.
    #[default]
    Locked,
    /// A write-only host: can write archives, cannot read one.
    Writer(WriterKey),
    /// A key holder: can do everything.
    Owner(RepoKey),
}

impl Keys {
    /// The id of the key pair held, if any.
    pub fn key_id(&self) -> Option<KeyId> {
        match self {
            Keys::Locked => None,
            Keys::Writer(w) => Some(w.key_id()),
            Keys::Owner(k) => Some(k.key_id()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_key_survives_its_secret_bytes() {
        let key = RepoKey::generate();
        let again = RepoKey::from_secret_bytes(&key.to_secret_bytes()).unwrap();
        assert_eq!(again.key_id(), key.key_id());
        assert_eq!(again.writer().digest_key, key.writer().digest_key);
        assert_eq!(
            again.key_id().to_string().parse::<KeyId>().unwrap(),
            key.key_id()
        );
    }

    #[test]
    fn damaged_secret_bytes_are_refused() {
        let key = RepoKey::generate();
        let mut bytes = key.to_secret_bytes().to_vec();
        let last = bytes.len() - 1;
        bytes[last] = b'x';
        assert!(RepoKey::from_secret_bytes(&bytes).is_err());
        assert!(RepoKey::from_secret_bytes(b"AGE-SECRET-KEY-1").is_err());
    }
}
