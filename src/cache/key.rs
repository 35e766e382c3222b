//! The cache key, `SHA-256("s3://bucket/key" + "|" + profile)` in lowercase hex: a
//! contract (`../shared/DESIGN.md`, beside this repository, and the README).

use crate::store::s3_url;
use sha2::{Digest, Sha256};

/// Kept as raw bytes in memory (32 bytes instead of a 64-byte string per entry).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    pub fn new(bucket: &str, key: &str, profile: &str) -> CacheKey {
        CacheKey::from_url(&s3_url(bucket, key), profile)
    }

    pub fn from_url(url: &str, profile: &str) -> CacheKey {
        let mut h = Sha256::new();
        h.update(url.as_bytes());
        h.update(b"|");
        h.update(profile.as_bytes());
        CacheKey(h.finalize().into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<CacheKey> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        // Only the canonical lowercase spelling names a cache file.
        (hex::encode(out) == s).then_some(CacheKey(out))
    }

    /// The shard directory name: the first two hex characters.
    pub fn shard(&self) -> String {
        hex::encode(&self.0[..1])
    }
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CacheKey({})", &self.hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_sha256sum_of_url_and_profile() {
        // printf '%s' 's3://bucket/key|default' | sha256sum
        let expected = std::process::Command::new("sh")
            .arg("-c")
            .arg("printf '%s' 's3://bucket/key|default' | sha256sum")
            .output()
            .expect("sha256sum runs");
        let expected = String::from_utf8_lossy(&expected.stdout);
        let expected = expected.split_whitespace().next().unwrap_or_default();
        assert_eq!(expected.len(), 64);
        assert_eq!(CacheKey::new("bucket", "key", "default").hex(), expected);
    }

    #[test]
    fn hex_round_trip_and_shard() {
        let k = CacheKey::new("b", "some/key with spaces", "prof");
        let hex = k.hex();
        assert_eq!(CacheKey::from_hex(&hex), Some(k));
        assert_eq!(k.shard(), hex[..2]);
        assert_eq!(CacheKey::from_hex(&hex.to_uppercase()), None);
        assert_eq!(CacheKey::from_hex("zz"), None);
    }
}
