//! [`Blob`] and [`Secret`]: values with special treatment on the wire and in logs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Bytes sent as one MessagePack `bin` value, not an array of numbers (Mitogen `Blob`); its
/// `Debug` shows only the length, so large payloads never flood a log.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[blob: {} bytes]", self.0.len())
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Blob {
        Blob(v)
    }
}

/// A string that is never printed: `Debug` and `Display` show `[secret]` (Mitogen `Secret`),
/// for passwords passed to remote functions.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[secret]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[secret]")
    }
}
