//! Config values written with units: sizes (`64K`) and rates (`50M/s`), accepted as
//! strings or plain integers.

use serde::{Deserialize, Deserializer, de};

use crate::size::parse_size;
use crate::throttle::parse_rate;

/// A byte size: `65536`, `"64K"`, `"1M"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// Bytes per second: `1048576`, `"50M"`, `"50M/s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub u64);

/// A string or an integer, as the user wrote it.
#[derive(Deserialize)]
#[serde(untagged)]
enum Written {
    Int(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Written::deserialize(d)? {
            Written::Int(n) => Ok(Size(n)),
            Written::Text(s) => parse_size(&s).map(Size).map_err(de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = match Written::deserialize(d)? {
            Written::Int(n) => n.to_string(),
            Written::Text(s) => s,
        };
        parse_rate(&text).map(Rate).map_err(de::Error::custom)
    }
}
