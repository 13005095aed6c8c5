//! Content digests: `sha256:` followed by 64 lowercase hex digits.
//!
//! A [`Digest`] is validated when it is made (parsed from text or computed from bytes), so code that
//! holds one never re-checks it, and its hex part is safe to use as a file name.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A sha256 content digest, e.g. `sha256:e3b0c442…`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why a string is not a [`Digest`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest `{0}` does not start with `sha256:` (only sha256 digests are supported)")]
    Algorithm(String),
    #[error("digest `{0}` must have exactly 64 lowercase hex digits after `sha256:`")]
    Hex(String),
}

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Digest(Sha256::digest(data).into())
    }

    /// Parses a bare 64-digit lowercase hex string (no `sha256:` prefix), as found in file names.
    pub fn from_hex(hex_str: &str) -> Result<Self, DigestError> {
        let bad = || DigestError::Hex(format!("sha256:{hex_str}"));
        if hex_str.len() != 64
            || !hex_str
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_str, &mut out).map_err(|_| bad())?;
        Ok(Digest(out))
    }

    /// The 64 hex digits without the algorithm prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw 32 bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("sha256:") {
            Some(h) => Digest::from_hex(h),
            None => Err(DigestError::Algorithm(s.to_string())),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental sha256 over everything written through it, counting bytes.
///
/// Wraps an inner writer (a temp file, an HTTP body, [`io::sink`]) so content is hashed on the way
/// through, never read twice.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The inner writer (e.g. to reach the file under a buffer).
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything written so far; writing may go on.
    pub fn digest(&self) -> Digest {
        Digest(self.hasher.clone().finalize().into())
    }

    /// The digest and length of everything written, and the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        (Digest(self.hasher.finalize().into()), self.len, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Incremental sha256 for callers that see their data as chunks (async bodies).
#[derive(Default, Clone)]
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn update(&mut self, chunk: &[u8]) {
        self.inner.update(chunk);
        self.len += chunk.len() as u64;
    }
    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn finish(self) -> (Digest, u64) {
        (Digest(self.inner.finalize().into()), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_of_empty_input_is_the_well_known_one() {
        assert_eq!(Digest::of(b"").to_string(), EMPTY);
        assert_eq!(EMPTY.parse::<Digest>().unwrap(), Digest::of(b""));
    }

    #[test]
    fn rejects_other_algorithms_uppercase_and_short_hex() {
        assert!(matches!(
            "sha512:abcd".parse::<Digest>(),
            Err(DigestError::Algorithm(_))
        ));
        assert!(matches!(
            EMPTY
                .to_uppercase()
                .replace("SHA256", "sha256")
                .parse::<Digest>(),
            Err(DigestError::Hex(_))
        ));
        assert!(matches!(
            "sha256:abc".parse::<Digest>(),
            Err(DigestError::Hex(_))
        ));
        assert!(matches!(
            "sha256:../../etc/passwd".parse::<Digest>(),
            Err(DigestError::Hex(_))
        ));
    }

    #[test]
    fn hashing_writer_matches_one_shot_digest() {
        let mut w = HashingWriter::new(io::sink());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (d, n, _) = w.finish();
        assert_eq!(d, Digest::of(b"hello world"));
        assert_eq!(n, 11);
    }

    #[test]
    fn serde_round_trip_and_rejects_garbage() {
        let d = Digest::of(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:nothex\"").is_err());
    }
}
