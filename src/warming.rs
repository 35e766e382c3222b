//! What warming means for a cache, shared by the two places that do it with an open
//! [`Cache`]: a live mount answering `s3cachefs warm s3://...` over its control socket, and
//! `s3cachefs warm` itself when no mount holds the cache.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cache::{Cache, CacheError, Outcome};
use crate::store::{ObjectMeta, ObjectStore, StoreError};

/// What warming one object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Warmed {
    /// Already in the cache (and still current).
    Cached,
    /// Fetched from S3 into the cache.
    Fetched,
    /// Not stored: larger than the whole cache, or the cache is off.
    NotCached,
}

/// `s3://bucket/prefix` as (bucket, prefix); `None` when it is not an S3 URL naming a
/// bucket.
pub fn parse_s3_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then(|| (bucket.to_string(), prefix.to_string()))
}

/// Whether `key` is named by `prefix`: everything under a prefix ending in `/` (or an
/// empty one); otherwise the object `prefix` itself and everything under `prefix/`, like a
/// path names a file or a directory (so `s3://b/data` does not take in `data.bak`).
pub fn names(prefix: &str, key: &str) -> bool {
    if prefix.is_empty() || prefix.ends_with('/') {
        return key.starts_with(prefix);
    }
    key == prefix
        || key
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Every object `s3://bucket/prefix` names (see [`names`]), in listing (key) order.
/// Directory markers (keys ending in `/`) are left out: there is nothing in them to warm.
pub async fn list(
    store: &dyn ObjectStore,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<ObjectMeta>, StoreError> {
    let listing = store.list(bucket, prefix, None).await?;
    Ok(listing
        .objects
        .into_iter()
        .filter(|o| names(prefix, &o.key) && !o.key.ends_with('/'))
        .collect())
}

/// How much of a filling object one read waits for.
const CHUNK: usize = 8 << 20;
/// How long a fully read download may take to be committed to the cache.
const COMMIT_WAIT: Duration = Duration::from_secs(10);

/// Opens the object through the cache and, on a miss, reads it to the end: the cache
/// fills in the background as it serves reads, so waiting for the last byte is what makes
/// "warmed" mean "on local disk" (and keeps the number of downloads at once to the
/// caller's parallelism). Those reads count in `bytes_from_cache`. Returns what happened
/// and the object's size.
pub async fn warm_one(cache: &Cache, bucket: &str, key: &str) -> Result<(Warmed, u64), CacheError> {
    let h = cache.open_object(bucket, key, None).await?;
    let what = match h.outcome {
        Outcome::Hit | Outcome::StaleHit => Warmed::Cached,
        Outcome::Miss => Warmed::Fetched,
        // Reading it would fetch it from S3 for nothing.
        Outcome::Direct => Warmed::NotCached,
    };
    if what == Warmed::Fetched {
        let mut offset = 0;
        while offset < h.size {
            let got = h.read(offset, CHUNK).await?;
            if got.is_empty() {
                return Err(CacheError::Internal(format!(
                    "{}: ended at byte {offset} of {}",
                    crate::cache::s3_url(bucket, key),
                    h.size
                )));
            }
            offset += got.len() as u64;
        }
        // The last byte can arrive just before the download is committed to the index;
        // a caller that closes the cache right after must not lose it.
        let deadline = tokio::time::Instant::now() + COMMIT_WAIT;
        while !cache.contains(bucket, key) {
            if tokio::time::Instant::now() >= deadline {
                // Read whole but not kept (evicted at once, or not stored after all).
                return Ok((Warmed::NotCached, h.size));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok((what, h.size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_what_a_prefix_names() {
        assert_eq!(parse_s3_url("s3://b/x/y"), Some(("b".into(), "x/y".into())));
        assert_eq!(parse_s3_url("s3://b"), Some(("b".into(), "".into())));
        assert_eq!(parse_s3_url("s3://"), None);
        assert_eq!(parse_s3_url("/mnt/s3/b"), None);
        assert!(names("", "anything"));
        assert!(names("d/", "d/a"));
        assert!(!names("d/", "e/a"));
        assert!(names("data", "data"));
        assert!(names("data", "data/x"));
        assert!(!names("data", "data.bak"));
    }
}
