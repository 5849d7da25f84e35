//! Content digests as OCI writes them (`sha256:<hex>`, `sha512:<hex>`), incremental hashers and
//! a hashing reader: the one place the registry and the image store parse, compute and compare
//! digests.
//!
//! It owns nothing but these values and must never import another Aloft crate: everything that
//! stores or moves blobs sits above it and turns [`DigestError`] into its own error.

#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// What can be wrong with a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The text is not `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`.
    #[error("Digest {0:?} is not a valid sha256 or sha512 digest")]
    Invalid(String),
    /// Content does not hash to the digest it was named by.
    #[error("Content named {expected} has digest {actual}")]
    Mismatch {
        /// The digest the content was named by.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
}

/// A hash algorithm allowed in OCI digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, the default.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// Every algorithm, in the order stores list them.
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

    /// The algorithm's name as written in a digest and in store paths.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated content digest such as `sha256:e3b0…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// The digest of `bytes` with `algorithm`.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(bytes);
        hasher.finish()
    }

    /// The SHA-256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest::of(Algorithm::Sha256, bytes)
    }

    /// A digest from its parts, if `hex` has the algorithm's length in lowercase hex.
    pub fn from_parts(algorithm: Algorithm, hex: &str) -> Option<Digest> {
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        (hex.len() == algorithm.hex_len() && hex.bytes().all(lower_hex)).then(|| Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// The hash algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex part.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Hashes `bytes` with this digest's algorithm and fails unless they match.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), DigestError> {
        self.check(&Digest::of(self.algorithm, bytes))
    }

    /// Fails with [`DigestError::Mismatch`] unless `actual` equals `self`.
    pub fn check(&self, actual: &Digest) -> Result<(), DigestError> {
        if actual == self {
            Ok(())
        } else {
            Err(DigestError::Mismatch {
                expected: self.to_string(),
                actual: actual.to_string(),
            })
        }
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || DigestError::Invalid(s.to_owned());
        let (name, hex) = s.split_once(':').ok_or_else(invalid)?;
        let algorithm = Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(invalid)?;
        Digest::from_parts(algorithm, hex).ok_or_else(invalid)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

/// An incremental hash for either algorithm.
#[derive(Debug, Clone)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(Sha256),
    /// SHA-512 state.
    Sha512(Sha512),
}

impl Hasher {
    /// A hasher with nothing hashed yet.
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// The algorithm this hasher computes.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Hashes more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything hashed.
    pub fn finish(self) -> Digest {
        let algorithm = self.algorithm();
        let hex = match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        };
        Digest { algorithm, hex }
    }
}

/// A reader that hashes and counts everything read through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`, hashing with `algorithm`.
    pub fn new(inner: R, algorithm: Algorithm) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(algorithm),
            len: 0,
        }
    }

    /// Reads the rest of the input, then returns the digest of everything and its length.
    pub fn drain_and_finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.hasher.finish(), self.len))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_both_algorithms() {
        let d = Digest::sha256_of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        let d512 = Digest::of(Algorithm::Sha512, b"hello");
        assert_eq!(d512.to_string().parse::<Digest>().unwrap(), d512);
        let long = format!("sha512:{}", "a".repeat(128));
        assert_eq!(long.parse::<Digest>().unwrap().to_string(), long);
    }

    #[test]
    fn refuses_malformed_digests() {
        for bad in [
            "sha256:abc",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256",
            &format!("sha256:{}", "A".repeat(64)),
            "sha256:../../../../etc/passwd0000000000000000000000000000000000000000",
        ] {
            assert_eq!(
                bad.parse::<Digest>(),
                Err(DigestError::Invalid(bad.to_owned())),
                "{bad} parsed"
            );
        }
    }

    #[test]
    fn verify_names_both_digests_on_a_mismatch() {
        let d = Digest::sha256_of(b"one");
        assert_eq!(d.verify(b"one"), Ok(()));
        let err = d.verify(b"two").unwrap_err();
        assert_eq!(
            err,
            DigestError::Mismatch {
                expected: d.to_string(),
                actual: Digest::sha256_of(b"two").to_string()
            }
        );
    }

    #[test]
    fn the_reader_hashes_and_counts_what_passes_through() {
        let reader = HashingReader::new(&b"hello"[..], Algorithm::Sha256);
        let (digest, len) = reader.drain_and_finish().unwrap();
        assert_eq!(len, 5);
        assert_eq!(digest, Digest::sha256_of(b"hello"));
    }
}
