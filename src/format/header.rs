//! The preamble (magic, version, header length) and the CBOR header.

use serde::{Deserialize, Serialize};

use super::{
    BlockSize, Digest, ENCRYPTION_SCHEME, FormatError, Geometry, KeyId, MAGIC, MAX_HEADER_LEN,
    MAX_WRAPPED_KEY_LEN, PREAMBLE_LEN, VERSION_MAJOR, VERSION_MAJOR_ENCRYPTED, VERSION_MINOR,
    VERSION_MINOR_ENCRYPTED, le,
};

/// The fixed 16 bytes every archive starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// Major format version.
    pub major: u16,
    /// Minor format version.
    pub minor: u16,
    /// Length of the CBOR header that follows.
    pub header_len: u32,
}

impl Preamble {
    /// Appends the 16 preamble bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.major.to_le_bytes());
        out.extend_from_slice(&self.minor.to_le_bytes());
        out.extend_from_slice(&self.header_len.to_le_bytes());
    }

    /// Decodes and checks the preamble: magic first, then version, then length.
    ///
    /// # Errors
    /// [`FormatError::Truncated`], [`FormatError::BadMagic`],
    /// [`FormatError::UnsupportedVersion`] or [`FormatError::Corrupt`] (header too long).
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() < PREAMBLE_LEN {
            return Err(FormatError::Truncated {
                what: "preamble",
                needed: PREAMBLE_LEN as u64,
                available: b.len() as u64,
            });
        }
        if b[..8] != MAGIC {
            return Err(FormatError::BadMagic {
                expected: hex::encode(MAGIC),
                found: hex::encode(&b[..8]),
            });
        }
        let major = u16::from_le_bytes(le(b, 8));
        let minor = u16::from_le_bytes(le(b, 10));
        if major != VERSION_MAJOR && major != VERSION_MAJOR_ENCRYPTED {
            return Err(FormatError::UnsupportedVersion {
                major,
                minor,
                supported: VERSION_MAJOR_ENCRYPTED,
            });
        }
        let header_len = u32::from_le_bytes(le(b, 12));
        if header_len == 0 || header_len > MAX_HEADER_LEN {
            return Err(FormatError::corrupt(
                "preamble",
                format!("header length {header_len} outside 1..={MAX_HEADER_LEN}"),
            ));
        }
        Ok(Preamble {
            major,
            minor,
            header_len,
        })
    }
}

/// Parent of a delta archive: which archive, and the exact bytes it must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    /// The parent's archive id.
    pub id: String,
    /// The parent's archive digest (its trailer checksum).
    pub digest: Digest,
    /// The parent's sequence number.
    pub seq: u64,
    /// The image digest of the parent's point (format 1.1, optional): lets the link
    /// hold when the parent's archive was replaced by a merged archive of the same
    /// point. Absent in 1.0 archives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Digest>,
}

/// How block data is compressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    /// Always `"zstd"` in version 1.
    pub algorithm: String,
    /// The zstd level the writer used (informational).
    pub level: i32,
}

/// Where the blocks of an archive came from (informational, for operators).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `"file"`, `"device"`, `"lvm"` or `"archive"` (a merge or consolidation).
    pub kind: String,
    /// Path or name of the source.
    pub path: String,
    /// How changed blocks were found: `"full"`, `"scan"` or `"changed-blocks"`.
    pub method: String,
}

/// The self-describing header of an archive, stored as a CBOR map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Volume name as the user knows it (`vg0/web`).
    pub volume_name: String,
    /// Stable volume id (32 hex digits), fixed at the first archive.
    pub volume_id: String,
    /// This archive's id (32 hex digits), unique in the repository.
    pub archive_id: String,
    /// Position in the volume's history; a delta's seq is greater than its parent's.
    pub seq: u64,
    /// Parent archive; `None` for a full archive.
    pub parent: Option<ParentRef>,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
    /// Volume size in bytes at this point.
    pub size: u64,
    /// Block size in bytes (fixed per volume).
    pub block_size: u32,
    /// Block data compression.
    pub compression: Compression,
    /// Source description.
    pub source: SourceInfo,
    /// For a backup of an LVM thin LV (format 1.1, optional): the snapshot this point
    /// was read from, kept as the base of the next delta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lvm: Option<LvmSnapshot>,
    /// Format 2.0 (encrypted archives, FORMAT.md section 18): the scheme, the key pair
    /// and the archive's wrapped data key. Required in 2.0, absent in 1.x.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionInfo>,
}

/// The header map `encryption` of a format 2.0 archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionInfo {
    /// [`ENCRYPTION_SCHEME`].
    pub scheme: String,
    /// The repository key pair the data key is wrapped to, 32 hex digits.
    pub key_id: String,
    /// The archive's data key, wrapped with age to the repository's recipient (the age
    /// binary format, a CBOR byte string of at most 1 KiB).
    #[serde(with = "cbor_bytes")]
    pub wrapped_key: Vec<u8>,
}

/// A `Vec<u8>` as a CBOR byte string (serde would write an array of integers).
mod cbor_bytes {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_bytes(V)
    }
}

/// The LVM thin snapshot an archive was read from (header key `lvm`, format 1.1). The
/// next backup of the volume trusts that snapshot as its base only if it still exists
/// with this uuid and thin id; otherwise it falls back to a full scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LvmSnapshot {
    /// Volume group.
    pub vg: String,
    /// The backed-up thin LV.
    pub lv: String,
    /// Its LVM uuid.
    pub lv_uuid: String,
    /// Its thin pool.
    pub pool: String,
    /// The snapshot LV's name (in the same VG).
    pub snapshot: String,
    /// The snapshot LV's uuid.
    pub snapshot_uuid: String,
    /// The snapshot's thin device id in the pool.
    pub thin_id: u64,
    /// The pool's chunk size in bytes.
    pub chunk_size: u64,
}

impl Header {
    /// The geometry this header describes.
    ///
    /// # Errors
    /// [`FormatError::Corrupt`] for an invalid block size.
    pub fn geometry(&self) -> Result<Geometry, FormatError> {
        let bs = BlockSize::new(self.block_size)
            .map_err(|e| FormatError::corrupt("header", e.to_string()))?;
        Ok(Geometry::new(self.size, bs))
    }

    /// Appends preamble and CBOR header.
    ///
    /// # Errors
    /// [`FormatError::InvalidInput`] if the header does not encode or is too large.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        let mut cbor = Vec::new();
        ciborium::into_writer(self, &mut cbor)
            .map_err(|e| FormatError::InvalidInput(format!("header does not encode: {e}")))?;
        let header_len = u32::try_from(cbor.len())
            .ok()
            .filter(|&n| n <= MAX_HEADER_LEN)
            .ok_or_else(|| {
                FormatError::InvalidInput(format!("header of {} bytes is too large", cbor.len()))
            })?;
        let (major, minor) = if self.encryption.is_some() {
            (VERSION_MAJOR_ENCRYPTED, VERSION_MINOR_ENCRYPTED)
        } else {
            (VERSION_MAJOR, VERSION_MINOR)
        };
        Preamble {
            major,
            minor,
            header_len,
        }
        .encode(out);
        out.extend_from_slice(&cbor);
        Ok(())
    }

    /// The key id of an encrypted (2.0) archive's `encryption` map.
    pub fn key_id(&self) -> Option<KeyId> {
        self.encryption.as_ref().and_then(|e| e.key_id.parse().ok())
    }

    /// Decodes the CBOR header bytes (after the preamble) of a format 1 archive and
    /// checks its fields.
    ///
    /// # Errors
    /// [`FormatError::Corrupt`] when the CBOR is malformed or a field is invalid.
    pub fn decode(cbor: &[u8]) -> Result<Self, FormatError> {
        Self::decode_format(cbor, VERSION_MAJOR)
    }

    /// Decodes the CBOR header bytes (after the preamble) of an archive of format
    /// `major` and checks its fields: a 2.0 header needs a well-formed `encryption`
    /// map, a 1.x header must not have one.
    ///
    /// # Errors
    /// [`FormatError::Corrupt`] when the CBOR is malformed or a field is invalid.
    pub fn decode_format(cbor: &[u8], major: u16) -> Result<Self, FormatError> {
        // The header is exactly one CBOR map filling the header length: serde would also
        // accept an array of fields and ignore trailing bytes, independent readers would not.
        if cbor.first().is_none_or(|b| b >> 5 != 5) {
            return Err(FormatError::corrupt("header", "not a CBOR map"));
        }
        // Keys first (streamed: values are skipped, nothing is built), then the fields.
        ciborium::from_reader::<TextKeys, _>(cbor).map_err(cbor_error)?;
        let mut rest = cbor;
        let h: Header = ciborium::from_reader(&mut rest).map_err(cbor_error)?;
        if !rest.is_empty() {
            return Err(FormatError::corrupt(
                "header",
                format!("{} bytes after the CBOR map", rest.len()),
            ));
        }
        h.geometry()?;
        for (name, id) in [("volume_id", &h.volume_id), ("archive_id", &h.archive_id)] {
            if id.len() != 32 || !id.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(FormatError::corrupt(
                    "header",
                    format!("{name} {id:?} is not 32 hex digits"),
                ));
            }
        }
        if h.compression.algorithm != "zstd" {
            return Err(FormatError::corrupt(
                "header",
                format!("unknown compression {:?}", h.compression.algorithm),
            ));
        }
        if let Some(p) = &h.parent
            && p.seq >= h.seq
        {
            return Err(FormatError::corrupt(
                "header",
                format!("parent seq {} is not below seq {}", p.seq, h.seq),
            ));
        }
        match (&h.encryption, major == VERSION_MAJOR_ENCRYPTED) {
            (None, false) => {}
            (Some(_), false) => {
                return Err(FormatError::corrupt(
                    "header",
                    format!(
                        "format {major} archive with an encryption map (only format 2 is encrypted)"
                    ),
                ));
            }
            (None, true) => {
                return Err(FormatError::corrupt(
                    "header",
                    "format 2 archive without its encryption map",
                ));
            }
            (Some(e), true) => {
                if e.scheme != ENCRYPTION_SCHEME {
                    return Err(FormatError::corrupt(
                        "header",
                        format!("unknown encryption scheme {:?}", e.scheme),
                    ));
                }
                if e.key_id.len() != 32 || e.key_id.parse::<KeyId>().is_err() {
                    return Err(FormatError::corrupt(
                        "header",
                        format!("encryption key_id {:?} is not 32 hex digits", e.key_id),
                    ));
                }
                if e.wrapped_key.is_empty() || e.wrapped_key.len() > MAX_WRAPPED_KEY_LEN {
                    return Err(FormatError::corrupt(
                        "header",
                        format!(
                            "wrapped data key of {} bytes (1..={MAX_WRAPPED_KEY_LEN})",
                            e.wrapped_key.len()
                        ),
                    ));
                }
            }
        }
        Ok(h)
    }
}

/// The maps whose keys FORMAT.md 5.1 defines, besides the header map itself.
const KNOWN_MAPS: [&str; 5] = ["parent", "compression", "source", "lvm", "encryption"];

/// A header map whose keys, and those of the maps of 5.1 in it, are text (FORMAT.md 5):
/// serde would take an integer key for a field's position. The values of unknown keys
/// are skipped unread: they may be anything, maps with other keys included.
struct TextKeys;

/// A map key that must be a text string.
struct TextKey(String);

/// The value of a known key: if it is a map, its keys must be text.
struct KnownValue;

fn not_text<E: serde::de::Error>(what: &str) -> E {
    E::custom(format!("a map key is {what}, not a text string"))
}

impl<'de> Deserialize<'de> for TextKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TextKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a text key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TextKey, E> {
                Ok(TextKey(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<TextKey, E> {
                Err(not_text("an integer"))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<TextKey, E> {
                Err(not_text("an integer"))
            }
            fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<TextKey, E> {
                Err(not_text("a byte string"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads a map whose keys must be text; `nested` checks the known maps inside it too.
fn text_key_map<'de, A: serde::de::MapAccess<'de>>(
    mut map: A,
    nested: bool,
) -> Result<(), A::Error> {
    while let Some(TextKey(key)) = map.next_key()? {
        if nested && KNOWN_MAPS.contains(&key.as_str()) {
            map.next_value::<KnownValue>()?;
        } else {
            map.next_value::<serde::de::IgnoredAny>()?;
        }
    }
    Ok(())
}

impl<'de> Deserialize<'de> for KnownValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KnownValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a header value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<KnownValue, A::Error> {
                text_key_map(map, false).map(|()| KnownValue)
            }
            // Anything else: the field's own type check reports it.
            fn visit_unit<E: serde::de::Error>(self) -> Result<KnownValue, E> {
                Ok(KnownValue)
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<KnownValue, E> {
                Ok(KnownValue)
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<KnownValue, E> {
                Ok(KnownValue)
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<KnownValue, E> {
                Ok(KnownValue)
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<KnownValue, E> {
                Ok(KnownValue)
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<KnownValue, E> {
                Ok(KnownValue)
            }
            fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<KnownValue, E> {
                Ok(KnownValue)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<KnownValue, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(KnownValue)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for TextKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TextKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a CBOR map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<TextKeys, A::Error> {
                text_key_map(map, true).map(|()| TextKeys)
            }
        }
        d.deserialize_map(V)
    }
}

/// A fixed header for unit tests: volume `v`, 4 KiB blocks, `size` bytes.
/// A header decoding error in words (ciborium's own Display shows its Debug form).
fn cbor_error<E: std::fmt::Display>(e: ciborium::de::Error<E>) -> FormatError {
    use ciborium::de::Error;
    let detail = match e {
        Error::Semantic(_, msg) => msg,
        Error::Syntax(at) => format!("malformed CBOR at byte {at}"),
        Error::Io(e) => format!("CBOR ends early: {e}"),
        Error::RecursionLimitExceeded => "CBOR nested too deeply".into(),
    };
    FormatError::corrupt("header", detail)
}

#[cfg(test)]
pub(crate) fn test_header(size: u64) -> Header {
    Header {
        volume_name: "v".into(),
        volume_id: "0123456789abcdef0123456789abcdef".into(),
        archive_id: "fedcba9876543210fedcba9876543210".into(),
        seq: 1,
        parent: None,
        created: "2026-11-22T00:00:00Z".into(),
        size,
        block_size: 4096,
        compression: Compression {
            algorithm: "zstd".into(),
            level: 1,
        },
        source: SourceInfo {
            kind: "file".into(),
            path: "/x".into(),
            method: "full".into(),
        },
        lvm: None,
        encryption: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Header {
        Header {
            volume_name: "vg0/web".into(),
            volume_id: "0123456789abcdef0123456789abcdef".into(),
            archive_id: "fedcba9876543210fedcba9876543210".into(),
            seq: 2,
            parent: Some(ParentRef {
                id: "00000000000000000000000000000001".into(),
                digest: Digest::of(b"parent"),
                seq: 1,
                image: Some(Digest::of(b"parent image")),
            }),
            created: "2026-11-22T00:00:00Z".into(),
            size: 12345,
            block_size: 4096,
            compression: Compression {
                algorithm: "zstd".into(),
                level: 3,
            },
            source: SourceInfo {
                kind: "file".into(),
                path: "/img".into(),
                method: "scan".into(),
            },
            lvm: None,
            encryption: None,
        }
    }

    fn cbor(v: &ciborium::Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).expect("cbor");
        out
    }

    fn map(h: &Header) -> Vec<(ciborium::Value, ciborium::Value)> {
        match ciborium::Value::serialized(h).expect("value") {
            ciborium::Value::Map(m) => m,
            _ => unreachable!("a header is a map"),
        }
    }

    #[test]
    fn lvm_key_round_trips_and_is_optional() {
        let mut h = sample();
        h.lvm = Some(LvmSnapshot {
            vg: "vg0".into(),
            lv: "web".into(),
            lv_uuid: "rPA6P5-RfIj-Kxof-Od3P-pkvh-qnNc-rMpq1b".into(),
            pool: "pool".into(),
            snapshot: "web-thinarc-fedcba987654".into(),
            snapshot_uuid: "P5k2ga-M18t-aBCd-0BsV-cxy1-yp4K-kATD8O".into(),
            thin_id: 7,
            chunk_size: 65536,
        });
        let mut out = Vec::new();
        h.encode(&mut out).unwrap();
        let pre = Preamble::decode(&out).unwrap();
        assert_eq!((pre.major, pre.minor), (1, 1));
        assert_eq!(Header::decode(&out[PREAMBLE_LEN..]).unwrap(), h);
        let keys: Vec<String> = map(&h)
            .iter()
            .filter_map(|(k, _)| k.as_text().map(str::to_string))
            .collect();
        assert_eq!(keys.last().map(String::as_str), Some("lvm"));
        // Without it (every 1.0 archive), the key is absent, not null.
        let plain = sample();
        assert!(!map(&plain).iter().any(|(k, _)| k.as_text() == Some("lvm")));
        let mut out = Vec::new();
        plain.encode(&mut out).unwrap();
        assert_eq!(Header::decode(&out[PREAMBLE_LEN..]).unwrap().lvm, None);
    }

    #[test]
    fn preamble_round_trip_and_checks_in_order() {
        let mut b = Vec::new();
        Preamble {
            major: 1,
            minor: 7,
            header_len: 300,
        }
        .encode(&mut b);
        assert_eq!(b.len(), PREAMBLE_LEN);
        assert_eq!(&b[..8], &MAGIC);
        assert_eq!(
            Preamble::decode(&b).expect("decode"),
            Preamble {
                major: 1,
                minor: 7,
                header_len: 300
            }
        );
        assert!(matches!(
            Preamble::decode(&b[..15]),
            Err(FormatError::Truncated { .. })
        ));
        let mut bad = b.clone();
        bad[0] = 0x88;
        bad[8] = 9; // a bad magic is reported before the version
        assert!(matches!(
            Preamble::decode(&bad),
            Err(FormatError::BadMagic { .. })
        ));
        let mut v3 = b.clone();
        v3[8] = 3;
        v3[12..16].copy_from_slice(&0u32.to_le_bytes()); // the version before the length
        assert!(matches!(
            Preamble::decode(&v3),
            Err(FormatError::UnsupportedVersion { major: 3, .. })
        ));
        for len in [0, MAX_HEADER_LEN + 1, u32::MAX] {
            let mut l = b.clone();
            l[12..16].copy_from_slice(&len.to_le_bytes());
            assert!(
                matches!(Preamble::decode(&l), Err(FormatError::Corrupt { .. })),
                "{len}"
            );
        }
    }

    #[test]
    fn header_round_trip() {
        for h in [
            sample(),
            Header {
                parent: None,
                seq: 1,
                ..sample()
            },
        ] {
            let mut out = Vec::new();
            h.encode(&mut out).expect("encode");
            let pre = Preamble::decode(&out).expect("preamble");
            assert_eq!((pre.major, pre.minor), (VERSION_MAJOR, VERSION_MINOR));
            assert_eq!(pre.header_len as usize, out.len() - PREAMBLE_LEN);
            assert_eq!(Header::decode(&out[PREAMBLE_LEN..]).expect("decode"), h);
        }
    }

    #[test]
    fn header_rules_are_checked() {
        let bad = [
            Header {
                block_size: 1000,
                ..sample()
            },
            Header {
                block_size: 2048,
                ..sample()
            },
            Header {
                volume_id: "xyz".into(),
                ..sample()
            },
            Header {
                archive_id: "0123456789abcdef0123456789abcdeg".into(),
                ..sample()
            },
            Header {
                compression: Compression {
                    algorithm: "lz4".into(),
                    level: 1,
                },
                ..sample()
            },
            Header { seq: 1, ..sample() },
        ];
        for h in bad {
            let mut m = Vec::new();
            ciborium::into_writer(&h, &mut m).expect("cbor");
            assert!(
                matches!(Header::decode(&m), Err(FormatError::Corrupt { .. })),
                "{h:?}"
            );
        }
    }

    #[test]
    fn header_must_be_exactly_one_map() {
        let h = sample();
        let mut m = cbor(&ciborium::Value::Map(map(&h)));
        assert_eq!(Header::decode(&m).expect("map"), h);
        m.push(0);
        assert!(
            matches!(Header::decode(&m), Err(FormatError::Corrupt { .. })),
            "trailing byte"
        );
        let fields = map(&h).into_iter().map(|(_, v)| v).collect();
        let array = cbor(&ciborium::Value::Array(fields));
        assert!(
            matches!(Header::decode(&array), Err(FormatError::Corrupt { .. })),
            "array"
        );
        assert!(Header::decode(&[]).is_err());
        let mut dup = map(&h);
        dup.push(dup[0].clone());
        assert!(
            Header::decode(&cbor(&ciborium::Value::Map(dup))).is_err(),
            "duplicate key"
        );
        let mut missing = map(&h);
        missing.retain(|(k, _)| k.as_text() != Some("size"));
        assert!(
            Header::decode(&cbor(&ciborium::Value::Map(missing))).is_err(),
            "missing key"
        );
    }

    #[test]
    fn keys_of_the_header_and_its_maps_are_text() {
        use ciborium::Value as C;
        // An integer key would otherwise stand for a field by position (0: volume_name).
        let mut m = map(&sample());
        m[0].0 = C::Integer(0.into());
        assert!(matches!(
            Header::decode(&cbor(&C::Map(m))),
            Err(FormatError::Corrupt { .. })
        ));
        let mut m = map(&sample());
        for (k, v) in m.iter_mut() {
            if k.as_text() == Some("parent")
                && let C::Map(p) = v
            {
                p.push((C::Integer(9.into()), C::Bool(true)));
            }
        }
        assert!(matches!(
            Header::decode(&cbor(&C::Map(m))),
            Err(FormatError::Corrupt { .. })
        ));
        // Inside the value of an unknown key, any key goes.
        let mut m = map(&sample());
        m.push((
            C::Text("x_future".into()),
            C::Map(vec![(C::Integer(1.into()), C::Bool(true))]),
        ));
        assert_eq!(Header::decode(&cbor(&C::Map(m))).expect("decode"), sample());
    }

    #[test]
    fn unknown_keys_are_ignored_and_parent_may_be_absent() {
        let h = Header {
            parent: None,
            seq: 1,
            ..sample()
        };
        let mut m = map(&h);
        m.retain(|(k, _)| k.as_text() != Some("parent"));
        m.insert(
            0,
            (
                ciborium::Value::Text("future".into()),
                ciborium::Value::Bytes(vec![1, 2]),
            ),
        );
        for (k, v) in m.iter_mut() {
            if k.as_text() == Some("source")
                && let ciborium::Value::Map(s) = v
            {
                s.push((
                    ciborium::Value::Text("host".into()),
                    ciborium::Value::Text("h1".into()),
                ));
            }
        }
        assert_eq!(
            Header::decode(&cbor(&ciborium::Value::Map(m))).expect("decode"),
            h
        );
    }
}
